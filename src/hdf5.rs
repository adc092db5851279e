//! A small pure-Rust HDF5 reader for the files Keras 3 writes with h5py's default settings
//! (`model.weights.h5`): superblock version 0, version-1 object headers (with continuation
//! blocks), old-style groups (symbol-table message, version-1 B-tree, local heap, symbol-table
//! nodes) and contiguous little-endian float32 datasets. Anything else is an error that names
//! the unsupported feature; corrupt or truncated input is an error, never a panic.

use crate::error::{LstmError, Result};
use std::collections::BTreeMap;

/// An HDF5 file held in memory.
pub struct H5File<'a> {
    data: &'a [u8],
    root: u64,
}

/// A float32 dataset: its shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// What [`LstmError::File`] names as the file when the bytes were given in memory.
pub(crate) const SOURCE: &str = "HDF5 weights";

fn bad(reason: impl Into<String>) -> LstmError {
    LstmError::File {
        path: SOURCE.into(),
        reason: reason.into(),
    }
}

/// What an object header holds (the messages this reader uses).
#[derive(Default)]
struct Header {
    symbol_table: Option<(u64, u64)>,
    shape: Option<Vec<usize>>,
    float32: Option<bool>,
    contiguous: Option<(u64, u64)>,
}

const UNDEFINED: u64 = u64::MAX;

impl<'a> H5File<'a> {
    /// Parses the superblock.
    ///
    /// ```
    /// assert!(lstm_wgpu::hdf5::H5File::new(b"not an hdf5 file").is_err());
    /// ```
    pub fn new(data: &'a [u8]) -> Result<Self> {
        let f = H5File { data, root: 0 };
        if f.bytes(0, 8)? != b"\x89HDF\r\n\x1a\n" {
            return Err(bad(
                "no HDF5 signature at offset 0 (user blocks are not supported)",
            ));
        }
        let version = f.u8(8)?;
        if version != 0 {
            return Err(bad(format!(
                "superblock version {version} (only 0 is supported)"
            )));
        }
        if f.u8(13)? != 8 || f.u8(14)? != 8 {
            return Err(bad("sizes of offsets and lengths other than 8 bytes"));
        }
        // Root group symbol-table entry at 56: link name offset, then object header address.
        let root = f.u64(56 + 8)?;
        Ok(H5File { data, root })
    }

    fn bytes(&self, at: u64, len: u64) -> Result<&'a [u8]> {
        let start = usize::try_from(at).map_err(|_| bad("offset out of range"))?;
        let len = usize::try_from(len).map_err(|_| bad("length out of range"))?;
        start
            .checked_add(len)
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| {
                bad(format!(
                    "truncated: {len} bytes at offset {start} past the end"
                ))
            })
    }

    fn u8(&self, at: u64) -> Result<u8> {
        Ok(self.bytes(at, 1)?[0])
    }

    fn u16(&self, at: u64) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.bytes(at, 2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&self, at: u64) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(at, 4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&self, at: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.bytes(at, 8)?.try_into().expect("8 bytes"),
        ))
    }

    /// Reads the messages of the version-1 object header at `addr`, following continuations.
    fn header(&self, addr: u64) -> Result<Header> {
        let version = self.u8(addr)?;
        if version != 1 {
            return Err(bad(format!(
                "object header version {version} at {addr} (only version 1 is supported)"
            )));
        }
        let count = self.u16(addr + 2)? as usize;
        let size = self.u32(addr + 8)? as u64;
        let mut blocks = vec![(addr + 16, size)];
        let mut h = Header::default();
        let mut seen = 0usize;
        while let Some((start, len)) = blocks.pop() {
            if blocks.len() + seen > 10_000 {
                return Err(bad("too many header messages"));
            }
            let mut at = start;
            let end = start
                .checked_add(len)
                .ok_or_else(|| bad("header size overflows"))?;
            while at + 8 <= end && seen < count {
                let kind = self.u16(at)?;
                let msg_len = self.u16(at + 2)? as u64;
                let body = at + 8;
                self.bytes(body, msg_len)?;
                seen += 1;
                match kind {
                    0x0001 => h.shape = Some(self.dataspace(body)?),
                    0x0003 => h.float32 = Some(self.is_float32(body)?),
                    0x0008 => h.contiguous = Some(self.layout(body)?),
                    0x0010 => blocks.push((self.u64(body)?, self.u64(body + 8)?)),
                    0x0011 => h.symbol_table = Some((self.u64(body)?, self.u64(body + 8)?)),
                    0x000B => return Err(bad("filtered (compressed) datasets are not supported")),
                    _ => {}
                }
                at = body + msg_len;
            }
        }
        Ok(h)
    }

    fn dataspace(&self, at: u64) -> Result<Vec<usize>> {
        let version = self.u8(at)?;
        let rank = self.u8(at + 1)? as u64;
        let dims_at = match version {
            1 => at + 8,
            2 => at + 4,
            v => return Err(bad(format!("dataspace version {v}"))),
        };
        (0..rank)
            .map(|k| {
                let d = self.u64(dims_at + 8 * k)?;
                usize::try_from(d).map_err(|_| bad("dimension too large"))
            })
            .collect()
    }

    fn is_float32(&self, at: u64) -> Result<bool> {
        let class = self.u8(at)? & 0x0f;
        let bits = self.u8(at + 1)?;
        let size = self.u32(at + 4)?;
        // Class 1 = floating point; bit 0 of the bit field = big endian.
        Ok(class == 1 && size == 4 && bits & 1 == 0)
    }

    fn layout(&self, at: u64) -> Result<(u64, u64)> {
        let version = self.u8(at)?;
        if version != 3 {
            return Err(bad(format!(
                "data layout version {version} (only 3 is supported)"
            )));
        }
        match self.u8(at + 1)? {
            1 => Ok((self.u64(at + 2)?, self.u64(at + 10)?)),
            0 => Err(bad("compact dataset storage is not supported")),
            2 => Err(bad("chunked dataset storage is not supported")),
            c => Err(bad(format!("data layout class {c}"))),
        }
    }

    /// The links of the group whose object header is at `addr`: name -> object header address.
    fn links(&self, addr: u64) -> Result<BTreeMap<String, u64>> {
        let (btree, heap) = self
            .header(addr)?
            .symbol_table
            .ok_or_else(|| bad(format!("object at {addr} is not a group")))?;
        if self.bytes(heap, 4)? != b"HEAP" {
            return Err(bad(format!("no local heap at {heap}")));
        }
        let heap_data = self.u64(heap + 24)?;
        let mut out = BTreeMap::new();
        let mut budget = 100_000usize;
        self.btree_links(btree, heap_data, 0, &mut budget, &mut out)?;
        Ok(out)
    }

    fn btree_links(
        &self,
        node: u64,
        heap_data: u64,
        depth: usize,
        budget: &mut usize,
        out: &mut BTreeMap<String, u64>,
    ) -> Result<()> {
        if node == UNDEFINED {
            return Ok(());
        }
        if depth > 32 {
            return Err(bad("B-tree deeper than 32 levels"));
        }
        // A corrupt tree can point back at itself: bound the work, not just the depth.
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| bad("B-tree has too many nodes (corrupt file?)"))?;
        if self.bytes(node, 4)? != b"TREE" {
            return Err(bad(format!("no B-tree node at {node}")));
        }
        let level = self.u8(node + 5)?;
        let entries = self.u16(node + 6)? as u64;
        // Keys (8 bytes) and children (8 bytes) alternate after the 24-byte node header.
        for k in 0..entries {
            let child = self.u64(node + 24 + 8 + 16 * k)?;
            if level > 0 {
                self.btree_links(child, heap_data, depth + 1, budget, out)?;
                continue;
            }
            if self.bytes(child, 4)? != b"SNOD" {
                return Err(bad(format!("no symbol-table node at {child}")));
            }
            let symbols = self.u16(child + 6)? as u64;
            for s in 0..symbols {
                let entry = child + 8 + 40 * s;
                let name_offset = self.u64(entry)?;
                let object = self.u64(entry + 8)?;
                out.insert(self.string(heap_data + name_offset)?, object);
            }
        }
        Ok(())
    }

    fn string(&self, at: u64) -> Result<String> {
        let start = usize::try_from(at).map_err(|_| bad("offset out of range"))?;
        let rest = self
            .data
            .get(start..)
            .ok_or_else(|| bad("link name past the end"))?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad("unterminated link name"))?;
        String::from_utf8(rest[..len].to_vec()).map_err(|_| bad("link name is not UTF-8"))
    }

    /// The object header address of `path` (`a/b/c`), or None when a link is missing.
    pub fn find(&self, path: &str) -> Result<Option<u64>> {
        let mut at = self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            match self.links(at)?.get(part) {
                Some(&next) => at = next,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// The names in the group at `path`, sorted numerically where they are numbers.
    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        let at = self
            .find(path)?
            .ok_or_else(|| bad(format!("no group {path}")))?;
        let mut names: Vec<String> = self.links(at)?.into_keys().collect();
        names.sort_by_key(|n| (n.parse::<u64>().unwrap_or(u64::MAX), n.clone()));
        Ok(names)
    }

    /// Reads the float32 dataset at `path`.
    pub fn dataset(&self, path: &str) -> Result<Dataset> {
        let at = self
            .find(path)?
            .ok_or_else(|| bad(format!("no dataset {path}")))?;
        let h = self.header(at)?;
        let shape = h
            .shape
            .ok_or_else(|| bad(format!("{path}: no dataspace")))?;
        if h.float32 != Some(true) {
            return Err(bad(format!("{path}: not a little-endian float32 dataset")));
        }
        let (addr, size) = h
            .contiguous
            .ok_or_else(|| bad(format!("{path}: no contiguous data layout")))?;
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("{path}: shape overflows")))?;
        if size != 4 * n as u64 {
            return Err(bad(format!(
                "{path}: {size} bytes of data for shape {shape:?}"
            )));
        }
        let bytes = self.bytes(addr, size)?;
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Dataset { shape, values })
    }
}
