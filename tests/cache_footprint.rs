//! What the TenantConfig cache holds per object, counted by the allocator: the
//! memory model's largest per-object part (README, "Memory model"). No
//! network: the object is one the controller writes for the scale
//! benchmark's shape (three entries, one include, two stores), as its watch
//! delivers it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
};

use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tenant_config_controller::api::{Guarded, slim_for_cache};

/// Bytes live on the heap, as requested (size classes add a little).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn reconciled(i: usize) -> serde_json::Value {
    let condition = |type_: &str, status: &str, message: &str| {
        json!({ "type": type_, "status": status, "reason": "Reconciled", "message": message,
                "observedGeneration": 1, "lastTransitionTime": "2026-12-04T04:31:00Z" })
    };
    json!({
        "apiVersion": "tenantconfig.io/v1alpha1", "kind": "TenantConfig",
        "metadata": {
            "name": format!("obj-{i:05}"), "namespace": format!("bench-t{:02}", i % 30),
            "uid": "6a0e3b52-2f7c-4a47-9d5e-0c4b6e8a1f3d", "resourceVersion": format!("{}", 100_000 + i),
            "generation": 1, "creationTimestamp": "2026-12-04T04:30:00Z",
            "finalizers": ["tenantconfig.io/cleanup"],
            "managedFields": [{ "manager": "kubectl", "operation": "Update", "apiVersion": "tenantconfig.io/v1alpha1",
                                "time": "2026-12-04T04:30:00Z", "fieldsType": "FieldsV1",
                                "fieldsV1": { "f:spec": { "f:entries": {}, "f:include": {} } } }],
        },
        "spec": {
            "entries": [
                { "key": "a", "value": format!("a{i}"), "tags": ["bench-db"] },
                { "key": "b", "value": format!("b{i}"), "tags": ["bench-db"] },
                { "key": "c", "value": format!("c{i}"), "tags": ["bench-ssm"] },
            ],
            "include": [{ "parameterPath": "/tenant-config-shared/bench/common" }],
        },
        "status": {
            "observedGeneration": 1, "tenant": format!("t{:02}", i % 30),
            "conditions": [
                condition("Ready", "True", ""),
                condition("StoreSynced", "True", "3 managed key(s) in 2 store(s)"),
                condition("Projected", "True", "4 key(s) projected"),
                condition("Reconciling", "False", ""),
                condition("Stalled", "False", ""),
            ],
            "stores": [
                { "name": "bench-db", "kind": "DynamoDB", "location": format!("TENANT#t{:02}/CONFIG#obj-{i:05}", i % 30), "keys": 2 },
                { "name": "bench-ssm", "kind": "ParameterStore", "location": format!("/tenant-config/t{:02}/obj-{i:05}", i % 30), "keys": 1 },
            ],
            "configMap": format!("obj-{i:05}"), "projectedKeys": 4,
            "sourceDigest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "lastProjectedTime": "2026-12-04T04:31:00Z",
        },
    })
}

/// Heap bytes per object of `count` cached copies made by `make`, as the
/// reflector keeps them (a key and an `Arc` of a clone).
fn per_object(count: usize, make: impl Fn(usize) -> Guarded) -> isize {
    let objects: Vec<Guarded> = (0..count).map(&make).collect();
    let before = LIVE.load(Ordering::SeqCst);
    let cache: Vec<(ObjectRef<Guarded>, std::sync::Arc<Guarded>)> =
        objects.iter().map(|o| (ObjectRef::from_obj(o), std::sync::Arc::new(o.clone()))).collect();
    let bytes = LIVE.load(Ordering::SeqCst) - before - (cache.capacity() * size_of_val(&cache[0])) as isize;
    drop(cache);
    bytes / count as isize
}

#[test]
fn a_cached_object_holds_its_status_packed() {
    let delivered = |i| serde_json::from_value::<Guarded>(reconciled(i)).unwrap();
    let as_delivered = per_object(1000, delivered);
    let cached = per_object(1000, |i| {
        let mut tc = delivered(i);
        slim_for_cache(&mut tc);
        tc
    });
    let status_unpacked = per_object(1000, |i| {
        let mut tc = delivered(i);
        slim_for_cache(&mut tc);
        let tc_ = tc.0.as_mut().unwrap();
        tc_.status = tc_.full_status().map(|s| s.into_owned());
        tc
    });
    eprintln!(
        "heap bytes per cached object: {as_delivered} as delivered, {status_unpacked} without the \
         bookkeeping, {cached} with the status packed too"
    );
    // Measured at the change: 3,954 → 2,445 → 1,597 bytes.
    assert!(cached + 600 < status_unpacked, "packing the status saved {} bytes", status_unpacked - cached);
    assert!(cached < 1_700, "{cached} bytes per cached object (the memory model counts on ~1.6 KiB)");
}
