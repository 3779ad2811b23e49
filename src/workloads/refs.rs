//! Which ConfigMaps and Secrets a pod spec reads, and the slimmed copies of
//! pods and workloads the caches keep (pure).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Volume};

use crate::api::names::CONFIG_DIGEST_ANNOTATION;

/// The kind of object a pod reads configuration from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

/// A ConfigMap or Secret by name, in the namespace of whoever references it.
pub type Reference = (Kind, String);

/// What the pod's volumes mount: `configMap` and `secret` volumes and the
/// sources of `projected` volumes. A mounted file is what refresh can update.
pub fn mounted(spec: &PodSpec) -> BTreeSet<Reference> {
    let mut refs = BTreeSet::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            refs.insert((Kind::ConfigMap, cm.name.clone()));
        }
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.insert((Kind::Secret, name));
        }
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                refs.insert((Kind::ConfigMap, cm.name.clone()));
            }
            if let Some(s) = &source.secret {
                refs.insert((Kind::Secret, s.name.clone()));
            }
        }
    }
    refs
}

/// Everything the pod reads: its mounts and, for every container (init and
/// regular), `envFrom` and `env[].valueFrom` references. Environment values
/// change only with a new pod: what rollout is for.
pub fn read(spec: &PodSpec) -> BTreeSet<Reference> {
    let mut refs = mounted(spec);
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for from in container.env_from.iter().flatten() {
            if let Some(cm) = &from.config_map_ref {
                refs.insert((Kind::ConfigMap, cm.name.clone()));
            }
            if let Some(s) = &from.secret_ref {
                refs.insert((Kind::Secret, s.name.clone()));
            }
        }
        for source in container.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(cm) = &source.config_map_key_ref {
                refs.insert((Kind::ConfigMap, cm.name.clone()));
            }
            if let Some(s) = &source.secret_key_ref {
                refs.insert((Kind::Secret, s.name.clone()));
            }
        }
    }
    refs
}

/// Keeps of a pod spec only what [`read`] looks at, so that a cache of many
/// pods holds names, not container specs.
pub fn slim_spec(spec: &mut PodSpec) {
    let slim_volume = |v: &Volume| Volume {
        name: v.name.clone(),
        config_map: v.config_map.clone(),
        secret: v.secret.clone(),
        projected: v.projected.clone(),
        ..Default::default()
    };
    let slim_container = |c: &Container| Container {
        name: c.name.clone(),
        env: c.env.as_ref().map(|env| env.iter().filter(|e| e.value_from.is_some()).cloned().collect()),
        env_from: c.env_from.clone(),
        ..Default::default()
    };
    *spec = PodSpec {
        volumes: spec.volumes.as_ref().map(|v| v.iter().map(slim_volume).collect()),
        containers: spec.containers.iter().map(slim_container).collect(),
        init_containers: spec.init_containers.as_ref().map(|c| c.iter().map(slim_container).collect()),
        ..Default::default()
    };
}

/// Keeps of a pod template its digest annotation and the slimmed spec.
pub fn slim_template(template: &mut PodTemplateSpec) {
    if let Some(meta) = &mut template.metadata {
        let digest = meta.annotations.as_ref().and_then(|a| a.get(CONFIG_DIGEST_ANNOTATION)).cloned();
        *meta = Default::default();
        meta.annotations = digest.map(|d| [(CONFIG_DIGEST_ANNOTATION.to_string(), d)].into());
    }
    if let Some(spec) = &mut template.spec {
        slim_spec(spec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    fn cm(name: &str) -> Reference {
        (Kind::ConfigMap, name.into())
    }

    fn secret(name: &str) -> Reference {
        (Kind::Secret, name.into())
    }

    fn every_kind_of_reference() -> PodSpec {
        spec(json!({
            "volumes": [
                { "name": "a", "configMap": { "name": "mounted-cm" } },
                { "name": "b", "secret": { "secretName": "mounted-secret" } },
                { "name": "c", "projected": { "sources": [
                    { "configMap": { "name": "projected-cm" } },
                    { "secret": { "name": "projected-secret" } },
                    { "serviceAccountToken": { "path": "token" } } ] } },
                { "name": "d", "emptyDir": {} }
            ],
            "initContainers": [{ "name": "init", "envFrom": [{ "secretRef": { "name": "init-secret" } }] }],
            "containers": [{
                "name": "app", "image": "app:1",
                "envFrom": [{ "configMapRef": { "name": "env-from-cm" } }],
                "env": [
                    { "name": "PLAIN", "value": "x" },
                    { "name": "A", "valueFrom": { "configMapKeyRef": { "name": "env-cm", "key": "k" } } },
                    { "name": "B", "valueFrom": { "secretKeyRef": { "name": "env-secret", "key": "k" } } },
                    { "name": "C", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }
                ]
            }]
        }))
    }

    #[test]
    fn mounts_are_volumes_and_projected_sources() {
        let refs = mounted(&every_kind_of_reference());
        let expected: BTreeSet<_> =
            [cm("mounted-cm"), secret("mounted-secret"), cm("projected-cm"), secret("projected-secret")].into();
        assert_eq!(refs, expected);
    }

    #[test]
    fn reads_add_the_environment_of_every_container() {
        let refs = read(&every_kind_of_reference());
        for r in [cm("env-from-cm"), cm("env-cm"), secret("env-secret"), secret("init-secret"), cm("mounted-cm")] {
            assert!(refs.contains(&r), "{r:?} in {refs:?}");
        }
        assert_eq!(refs.len(), 8, "nothing else: {refs:?}");
    }

    #[test]
    fn a_slimmed_spec_reads_the_same_and_holds_no_container_details() {
        let mut slim = every_kind_of_reference();
        slim_spec(&mut slim);
        assert_eq!(read(&slim), read(&every_kind_of_reference()));
        let app = &slim.containers[0];
        assert_eq!(app.image, None, "no image kept");
        assert_eq!(app.env.as_ref().unwrap().len(), 3, "only env entries with a reference: {:?}", app.env);
        assert!(slim.volumes.as_ref().unwrap().iter().all(|v| v.empty_dir.is_none()));
    }

    #[test]
    fn a_slimmed_template_keeps_only_the_digest_annotation() {
        let mut template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": { "labels": { "app": "web" },
                          "annotations": { CONFIG_DIGEST_ANNOTATION: "sha256:1", "other": "x" } },
            "spec": { "containers": [{ "name": "app", "image": "app:1" }] }
        }))
        .unwrap();
        slim_template(&mut template);
        let meta = template.metadata.unwrap();
        assert_eq!(meta.labels, None);
        assert_eq!(meta.annotations, Some([(CONFIG_DIGEST_ANNOTATION.to_string(), "sha256:1".to_string())].into()));
    }
}
