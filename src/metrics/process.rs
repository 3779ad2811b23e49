//! The standard `process_*` metrics (names as the Prometheus client libraries
//! export them), read from `/proc/self` at scrape time. Linux only, where the
//! controller runs; elsewhere nothing is exported.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::ConstCounter,
};

/// Exports `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_start_time_seconds`,
/// `process_open_fds`, `process_max_fds` and `process_threads`.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = read() else { return Ok(()) };
        let counter = ConstCounter::new(sample.cpu_seconds);
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)?;
        let gauges: [(&str, &str, Option<f64>); 6] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", Some(sample.resident_bytes as f64)),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", Some(sample.virtual_bytes as f64)),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                Some(sample.start_time_seconds),
            ),
            ("process_threads", "Number of OS threads in the process", Some(sample.threads as f64)),
            ("process_open_fds", "Number of open file descriptors", sample.open_fds.map(|n| n as f64)),
            ("process_max_fds", "Maximum number of open file descriptors", sample.max_fds.map(|n| n as f64)),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                super::encode_gauge(&mut encoder, name, help, value)?;
            }
        }
        Ok(())
    }
}

/// Reads `/proc/self`; `None` where there is no procfs.
pub fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let &(ticks, page_size, boot_time) = constants().as_ref()?;
    let mut sample = parse_stat(&stat, ticks, page_size, boot_time)?;
    sample.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|entries| entries.count() as u64);
    sample.max_fds = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(parse_max_open_files);
    Some(sample)
}

/// Clock ticks per second, page size and boot time: fixed while the process
/// runs, so read once, not on every scrape.
fn constants() -> &'static Option<(f64, u64, u64)> {
    static CONSTANTS: std::sync::OnceLock<Option<(f64, u64, u64)>> = std::sync::OnceLock::new();
    CONSTANTS.get_or_init(|| {
        let boot_time = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page_size) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        Some((ticks.max(1) as f64, page_size.max(1) as u64, boot_time))
    })
}

/// Fields of `/proc/self/stat` (proc(5)): after the command in parentheses
/// (which may hold spaces), field 3 is the state; utime 14, stime 15,
/// num_threads 20, starttime 22 (clock ticks after boot), vsize 23 (bytes),
/// rss 24 (pages).
pub fn parse_stat(stat: &str, ticks_per_second: f64, page_size: u64, boot_time: u64) -> Option<Sample> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    // fields[0] is field 3 of the file.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Sample {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks_per_second,
        resident_bytes: field(24)? * page_size,
        virtual_bytes: field(23)?,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks_per_second,
        threads: field(20)?,
        open_fds: None,
        max_fds: None,
    })
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command() {
        // A command with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (tenant (config) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 7 0 \
                    12000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let sample = parse_stat(stat, 100.0, 4096, 1_764_000_000).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0, "(250 + 50) ticks at 100 per second");
        assert_eq!(sample.threads, 7);
        assert_eq!(sample.start_time_seconds, 1_764_000_120.0);
        assert_eq!(sample.virtual_bytes, 104_857_600);
        assert_eq!(sample.resident_bytes, 2560 * 4096);
        assert_eq!(parse_stat("garbage", 100.0, 4096, 0), None);
    }

    #[test]
    fn boot_time_and_fd_limit() {
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1764000000\nprocesses 9\n"), Some(1_764_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(parse_max_open_files(limits), Some(1_048_576));
        assert_eq!(parse_max_open_files("Max open files            unlimited   unlimited  files"), None);
    }

    #[test]
    fn this_process_reads_sensibly() {
        let sample = read().expect("procfs on Linux");
        assert!(sample.resident_bytes > 1024 * 1024, "{sample:?}");
        assert!(sample.threads >= 1 && sample.open_fds.unwrap() >= 3, "{sample:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(sample.start_time_seconds <= now + 1.0 && sample.start_time_seconds > now - 86_400.0 * 365.0);
    }
}
