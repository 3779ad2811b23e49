//! jemalloc's own statistics, read at scrape time: what the heap holds
//! (`allocated`) against what it keeps resident. The difference is
//! fragmentation and freed pages not yet handed back, which the process's RSS
//! alone cannot tell apart from live data (README "Memory").

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use tikv_jemalloc_ctl::{epoch, stats};

/// Exports `allocator_{allocated,active,resident,metadata,retained}_bytes`.
#[derive(Debug, Default)]
pub struct AllocatorCollector;

/// One reading, in bytes; `None` when jemalloc did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorSample {
    pub allocated: u64,
    pub active: u64,
    pub resident: u64,
    pub metadata: u64,
    pub retained: u64,
}

/// Reads jemalloc's statistics (they refresh only when the epoch advances).
pub fn read() -> Option<AllocatorSample> {
    epoch::advance().ok()?;
    Some(AllocatorSample {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

impl Collector for AllocatorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = read() else { return Ok(()) };
        let gauges = [
            ("allocator_allocated_bytes", "Bytes the heap's live allocations hold (jemalloc)", sample.allocated),
            ("allocator_active_bytes", "Bytes in the heap's active pages (jemalloc)", sample.active),
            (
                "allocator_resident_bytes",
                "Bytes of heap pages resident in memory, metadata included (jemalloc)",
                sample.resident,
            ),
            ("allocator_metadata_bytes", "Bytes jemalloc uses for its own metadata", sample.metadata),
            (
                "allocator_retained_bytes",
                "Virtual memory jemalloc retains for reuse, not resident (jemalloc)",
                sample.retained,
            ),
        ];
        for (name, help, value) in gauges {
            super::encode_gauge(&mut encoder, name, help, value as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_consistent() {
        // Whether or not jemalloc is this process's allocator, its counters hold
        // together: live bytes fit in the active pages, which are resident.
        let sample = read().expect("jemalloc answers");
        assert!(sample.allocated <= sample.active, "{sample:?}");
        assert!(sample.active <= sample.resident, "{sample:?}");
    }
}
