//! A minimal HDF5 writer for Keras weight files: groups and contiguous little-endian float
//! datasets, nothing else. The file is HDF5's "latest" layout, as h5py writes with
//! `libver="latest"`: a version 2 superblock, version 2 object headers, groups with their
//! links stored compactly in the header (link info, group info and one link message per
//! child), datasets with a version 2 dataspace, an IEEE float datatype, a fill value
//! message and a contiguous layout. Every superblock and header carries its Jenkins
//! lookup3 checksum. Objects are written children first, so each parent knows their
//! addresses; the root group's header comes last and the superblock points to it.

/// "Undefined address".
const UNDEF: u64 = u64::MAX;

/// A node of the tree to write.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A group and its children, in link order.
    Group(Vec<(String, Node)>),
    /// A dataset: its shape, the element size (4: f32, 8: f64), whether it holds signed
    /// integers (int64) instead of floats, and its little-endian bytes.
    Dataset {
        shape: Vec<usize>,
        elem: usize,
        int: bool,
        bytes: Vec<u8>,
    },
}

impl Node {
    /// An empty group.
    pub(crate) fn group() -> Node {
        Node::Group(Vec::new())
    }

    /// The child `name` of this group, made (an empty group) if absent.
    pub(crate) fn child(&mut self, name: &str) -> &mut Node {
        let Node::Group(children) = self else {
            panic!("a dataset has no children")
        };
        let at = match children.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                children.push((name.to_string(), Node::group()));
                children.len() - 1
            }
        };
        &mut children[at].1
    }

    /// The group at `path` (`a/b/c`), made as needed.
    pub(crate) fn path(&mut self, path: &str) -> &mut Node {
        path.split('/')
            .filter(|p| !p.is_empty())
            .fold(self, |node, part| node.child(part))
    }

    /// Adds a dataset `name` to this group.
    pub(crate) fn dataset(&mut self, name: &str, shape: &[usize], values: &[f64], elem: usize) {
        let mut bytes = Vec::with_capacity(values.len() * elem);
        for &v in values {
            if elem == 4 {
                bytes.extend_from_slice(&(v as f32).to_le_bytes());
            } else {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        self.push_dataset(name, shape, elem, false, bytes);
    }

    /// Adds a scalar int64 dataset `name` (Keras's `iterations`) to this group.
    pub(crate) fn dataset_i64(&mut self, name: &str, values: &[f64]) {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect();
        let shape: &[usize] = if values.len() == 1 {
            &[]
        } else {
            &[values.len()]
        };
        self.push_dataset(name, shape, 8, true, bytes);
    }

    fn push_dataset(
        &mut self,
        name: &str,
        shape: &[usize],
        elem: usize,
        int: bool,
        bytes: Vec<u8>,
    ) {
        let Node::Group(children) = self else {
            panic!("a dataset has no children")
        };
        children.push((
            name.to_string(),
            Node::Dataset {
                shape: shape.to_vec(),
                elem,
                int,
                bytes,
            },
        ));
    }
}

/// The bytes of an HDF5 file whose root group is `root`.
pub(crate) fn file(root: &Node) -> Vec<u8> {
    let mut out = vec![0u8; 48];
    let root_addr = write(root, &mut out);
    let eof = out.len() as u64;
    let mut sb = Vec::with_capacity(48);
    sb.extend_from_slice(b"\x89HDF\r\n\x1a\n");
    sb.extend_from_slice(&[2, 8, 8, 0]);
    sb.extend_from_slice(&0u64.to_le_bytes());
    sb.extend_from_slice(&UNDEF.to_le_bytes());
    sb.extend_from_slice(&eof.to_le_bytes());
    sb.extend_from_slice(&root_addr.to_le_bytes());
    let sum = lookup3(&sb);
    sb.extend_from_slice(&sum.to_le_bytes());
    out[..48].copy_from_slice(&sb);
    out
}

/// Writes `node` (children first) and returns the address of its object header.
fn write(node: &Node, out: &mut Vec<u8>) -> u64 {
    let mut messages: Vec<(u8, Vec<u8>)> = Vec::new();
    match node {
        Node::Group(children) => {
            let addrs: Vec<u64> = children.iter().map(|(_, c)| write(c, out)).collect();
            // link info: no creation order, compact storage (no fractal heap, no index)
            let mut li = vec![0u8, 0];
            li.extend_from_slice(&UNDEF.to_le_bytes());
            li.extend_from_slice(&UNDEF.to_le_bytes());
            messages.push((0x02, li));
            messages.push((0x0A, vec![0, 0]));
            for ((name, _), addr) in children.iter().zip(addrs) {
                let name = name.as_bytes();
                // version 1; flags: a 1-byte name length (hard link, ASCII); or 2 bytes
                let mut l = vec![1u8];
                if name.len() < 256 {
                    l.push(0);
                    l.push(name.len() as u8);
                } else {
                    l.push(1);
                    l.extend_from_slice(&(name.len() as u16).to_le_bytes());
                }
                l.extend_from_slice(name);
                l.extend_from_slice(&addr.to_le_bytes());
                messages.push((0x06, l));
            }
        }
        Node::Dataset {
            shape,
            elem,
            int,
            bytes,
        } => {
            let data_addr = if bytes.is_empty() {
                UNDEF
            } else {
                let a = out.len() as u64;
                out.extend_from_slice(bytes);
                a
            };
            // dataspace v2: simple (scalar for rank 0), no maximum dims
            let mut ds = vec![2u8, shape.len() as u8, 0, u8::from(!shape.is_empty())];
            for &d in shape {
                ds.extend_from_slice(&(d as u64).to_le_bytes());
            }
            messages.push((0x01, ds));
            if *int {
                // fixed point v1, little-endian, signed; offset 0, full precision
                let mut dt = vec![0x10u8, 0x08, 0, 0];
                dt.extend_from_slice(&(*elem as u32).to_le_bytes());
                dt.extend_from_slice(&0u16.to_le_bytes());
                dt.extend_from_slice(&((*elem * 8) as u16).to_le_bytes());
                messages.push((0x03, dt));
            } else {
                // IEEE float, little-endian, implied leading mantissa bit
                let (sign, prec, eloc, esize, msize, bias) = if *elem == 4 {
                    (31u8, 32u16, 23u8, 8u8, 23u8, 127u32)
                } else {
                    (63, 64, 52, 11, 52, 1023)
                };
                let mut dt = vec![0x11u8, 0x20, sign, 0];
                dt.extend_from_slice(&(*elem as u32).to_le_bytes());
                dt.extend_from_slice(&0u16.to_le_bytes());
                dt.extend_from_slice(&prec.to_le_bytes());
                dt.extend_from_slice(&[eloc, esize, 0, msize]);
                dt.extend_from_slice(&bias.to_le_bytes());
                messages.push((0x03, dt));
            }
            // fill value v3: allocated early, written if set, none set
            messages.push((0x05, vec![3, 0x09]));
            // layout v3: contiguous
            let mut ly = vec![3u8, 1];
            ly.extend_from_slice(&data_addr.to_le_bytes());
            ly.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            messages.push((0x08, ly));
        }
    }
    let addr = out.len() as u64;
    let body: usize = messages.iter().map(|(_, m)| 4 + m.len()).sum();
    let mut h = Vec::with_capacity(12 + body);
    h.extend_from_slice(b"OHDR");
    // version 2; flags 2: the chunk size in 4 bytes
    h.extend_from_slice(&[2, 2]);
    h.extend_from_slice(&(body as u32).to_le_bytes());
    for (kind, m) in &messages {
        h.push(*kind);
        h.extend_from_slice(&(m.len() as u16).to_le_bytes());
        h.push(0);
        h.extend_from_slice(m);
    }
    let sum = lookup3(&h);
    h.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&h);
    addr
}

/// lookup3's `mix`: the six subtract-xor-rotate rounds over one 12-byte block.
fn mix(mut a: u32, mut b: u32, mut c: u32) -> (u32, u32, u32) {
    // one line per round: x -= z; x ^= z <<< r; z += y, the roles turning
    let round = |x: &mut u32, y: u32, z: &mut u32, r: u32| {
        *x = x.wrapping_sub(*z);
        *x ^= z.rotate_left(r);
        *z = z.wrapping_add(y);
    };
    round(&mut a, b, &mut c, 4);
    round(&mut b, c, &mut a, 6);
    round(&mut c, a, &mut b, 8);
    round(&mut a, b, &mut c, 16);
    round(&mut b, c, &mut a, 19);
    round(&mut c, a, &mut b, 4);
    (a, b, c)
}

/// Bob Jenkins's lookup3 `hashlittle` with initial value 0, HDF5's metadata checksum.
fn lookup3(key: &[u8]) -> u32 {
    let mut a: u32 = 0xdead_beef_u32.wrapping_add(key.len() as u32);
    let (mut b, mut c) = (a, a);
    let word = |k: &[u8]| -> u32 {
        let mut w = [0u8; 4];
        w[..k.len()].copy_from_slice(k);
        u32::from_le_bytes(w)
    };
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        (a, b, c) = mix(a, b, c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(&k[..k.len().min(4)]));
    if k.len() > 4 {
        b = b.wrapping_add(word(&k[4..k.len().min(8)]));
    }
    if k.len() > 8 {
        c = c.wrapping_add(word(&k[8..]));
    }
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

#[cfg(test)]
mod tests {
    /// lookup3's published test vectors (hashlittle with initval 0): "" and "Four score and
    /// seven years ago".
    #[test]
    fn lookup3_matches_its_reference() {
        assert_eq!(super::lookup3(b""), 0xdeadbeef);
        assert_eq!(
            super::lookup3(b"Four score and seven years ago"),
            0x17770551
        );
    }
}
