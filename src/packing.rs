//! A byte codec for what the controller keeps per object between reconciles.
//!
//! Kept as structs, one object's last read cost about a dozen allocations
//! (strings, vectors, a map node sized for eleven entries), ~2.8 KiB for a
//! record of four short entries (heaptrack, 3,000 objects). Packed, it is
//! one allocation of about its bytes. Unpacking is rare (a shared-path change
//! reusing the read, or a resync comparing digests), so it may be slow.

/// Appends values to one buffer: lengths and integers as LEB128 varints,
/// strings as a length and their bytes.
#[derive(Default)]
pub struct Packer(Vec<u8>);

impl Packer {
    pub fn u64(&mut self, mut value: u64) -> &mut Self {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.0.push(byte);
                return self;
            }
            self.0.push(byte | 0x80);
        }
    }

    /// Signed values, zigzag-encoded so that small negatives stay short.
    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.u64(((value << 1) ^ (value >> 63)) as u64)
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.0.push(value as u8);
        self
    }

    pub fn str(&mut self, value: &str) -> &mut Self {
        self.u64(value.len() as u64);
        self.0.extend_from_slice(value.as_bytes());
        self
    }

    pub fn opt_str(&mut self, value: Option<&str>) -> &mut Self {
        self.bool(value.is_some());
        if let Some(value) = value {
            self.str(value);
        }
        self
    }

    pub fn opt_i64(&mut self, value: Option<i64>) -> &mut Self {
        self.bool(value.is_some());
        if let Some(value) = value {
            self.i64(value);
        }
        self
    }

    /// The bytes, in an allocation of their exact size.
    pub fn finish(self) -> Box<[u8]> {
        self.0.into_boxed_slice()
    }
}

/// Reads back what a [`Packer`] wrote, in the same order. `None` on bytes it
/// did not write (cannot happen for bytes kept in memory; callers treat it as
/// "nothing kept", which costs a store read, never a wrong answer).
pub struct Unpacker<'a>(&'a [u8]);

impl<'a> Unpacker<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Unpacker(bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    pub fn i64(&mut self) -> Option<i64> {
        let raw = self.u64()?;
        Some((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    pub fn bool(&mut self) -> Option<bool> {
        let (&byte, rest) = self.0.split_first()?;
        self.0 = rest;
        match byte {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// A count of items that follow, each at least one byte: never more
    /// than the bytes left (so bad bytes cannot ask for a huge allocation).
    pub fn count(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok().filter(|&n| n <= self.0.len())
    }

    pub fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u64()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(bytes.to_vec()).ok()
    }

    pub fn opt_string(&mut self) -> Option<Option<String>> {
        Some(if self.bool()? { Some(self.string()?) } else { None })
    }

    pub fn opt_i64(&mut self) -> Option<Option<i64>> {
        Some(if self.bool()? { Some(self.i64()?) } else { None })
    }

    /// Whether everything was read (a decoder that stops early is a bug).
    pub fn is_done(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_as_written() {
        let mut packer = Packer::default();
        let numbers = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        for n in numbers {
            packer.u64(n);
        }
        for n in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            packer.i64(n);
        }
        packer.str("").str("ключ/κλειδί").bool(true).bool(false);
        packer.opt_str(None).opt_str(Some("x")).opt_i64(None).opt_i64(Some(-7));
        let bytes = packer.finish();
        let mut unpacker = Unpacker::new(&bytes);
        for n in numbers {
            assert_eq!(unpacker.u64(), Some(n));
        }
        for n in [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX] {
            assert_eq!(unpacker.i64(), Some(n));
        }
        assert_eq!(unpacker.string().as_deref(), Some(""));
        assert_eq!(unpacker.string().as_deref(), Some("ключ/κλειδί"));
        assert_eq!((unpacker.bool(), unpacker.bool()), (Some(true), Some(false)));
        assert_eq!(unpacker.opt_string(), Some(None));
        assert_eq!(unpacker.opt_string(), Some(Some("x".into())));
        assert_eq!((unpacker.opt_i64(), unpacker.opt_i64()), (Some(None), Some(Some(-7))));
        assert!(unpacker.is_done());
    }

    #[test]
    fn bytes_it_did_not_write_read_as_nothing() {
        assert_eq!(Unpacker::new(&[]).u64(), None, "empty");
        assert_eq!(Unpacker::new(&[0x80]).u64(), None, "a varint cut short");
        assert_eq!(Unpacker::new(&[0xff; 11]).u64(), None, "a varint too long");
        assert_eq!(Unpacker::new(&[5, b'a']).string(), None, "a string cut short");
        assert_eq!(Unpacker::new(&[2, 0xc3, 0x28]).string(), None, "not UTF-8");
        assert_eq!(Unpacker::new(&[2]).bool(), None, "not a bool");
        assert_eq!(Unpacker::new(&[3, 0, 0]).count(), None, "more items than bytes");
        assert_eq!(Unpacker::new(&[2, 0, 0]).count(), Some(2));
    }
}
