//! Rules for Parameter Store paths and their segments, used by the CRD checks,
//! the backends, routing and event parsing alike. Pure.

/// The environment level of a Parameter Store path when the namespace has no
/// environment: `{pathPrefix}/{tenant}/_/{configType}`. Every location sits at
/// the same depth, so an environment can never be read as a configType (or the
/// reverse). `_` is never a label value (those start and end alphanumeric), so
/// no environment can be named like it.
pub const NO_ENVIRONMENT: &str = "_";

/// Only the characters AWS allows in a parameter name: `a-zA-Z0-9_.-/`.
pub fn has_parameter_name_charset(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
}

/// The segments of an absolute path (`/a/b` → `a`, `b`), or `None` when it is
/// relative or has an empty, `.` or `..` segment (traversal).
pub fn segments(path: &str) -> Option<Vec<&str>> {
    let relative = path.strip_prefix('/')?;
    let segments: Vec<&str> = relative.split('/').collect();
    segments.iter().all(|s| is_plain_segment(s)).then_some(segments)
}

/// Not empty, not `.` or `..`.
pub fn is_plain_segment(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".."
}

/// The part of `name` below `prefix`, if `name` is strictly under it on a
/// segment boundary (`/a/bc` is not under `/a/b`).
pub fn strip_path<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    name.strip_prefix(prefix)?.strip_prefix('/').filter(|rest| !rest.is_empty())
}

/// `path` is `prefix` itself or lies under it on a segment boundary.
pub fn is_at_or_under(path: &str, prefix: &str) -> bool {
    path == prefix.trim_end_matches('/') || strip_path(path, prefix).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_nest_on_segment_boundaries_only() {
        assert_eq!(strip_path("/a/b/c", "/a/b"), Some("c"));
        assert_eq!(strip_path("/a/b/c", "/a/b/"), Some("c"));
        assert_eq!(strip_path("/a/bc", "/a/b"), None);
        assert_eq!(strip_path("/a/b", "/a/b"), None, "strictly under");
        assert!(is_at_or_under("/a/b", "/a/b/"));
        assert!(is_at_or_under("/a/b/c", "/a/b"));
        assert!(!is_at_or_under("/a/bc", "/a/b"));
    }

    #[test]
    fn strip_path_is_segment_wise() {
        assert_eq!(strip_path("/a/b/c", "/a"), Some("b/c"));
        assert_eq!(strip_path("/a/b/c", "/a/"), Some("b/c"));
        assert_eq!(strip_path("/ab/c", "/a"), None);
        assert_eq!(strip_path("/a", "/a"), None);
        assert_eq!(strip_path("/a/", "/a"), None);
    }

    #[test]
    fn traversal_and_empty_segments_are_refused() {
        assert_eq!(segments("/a/b"), Some(vec!["a", "b"]));
        for bad in ["a/b", "/a//b", "/a/./b", "/a/../b", "/", ""] {
            assert_eq!(segments(bad), None, "{bad:?}");
        }
        assert!(has_parameter_name_charset("/a-b_c.d/e"));
        assert!(!has_parameter_name_charset("/a b"));
    }
}
