//! Reading (and [`write()`]) the members of a `.keras` file: a zip archive whose members Keras stores without
//! compression, zip64 where Keras writes it (members past about 2 GiB, or opened with
//! `force_zip64`: the sizes then live in the zip64 extra field). Each member's CRC-32 is
//! checked; compressed members and truncated or corrupt archives are errors, never panics.

use crate::error::{LstmError, Result};

fn bad(reason: impl Into<String>) -> LstmError {
    LstmError::File {
        path: ".keras archive".into(),
        reason: reason.into(),
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// The member `name` of a `.keras` archive's [`members`], or an error naming it.
pub(crate) fn member<'a>(members: &[(String, &'a [u8])], name: &str) -> Result<&'a [u8]> {
    members
        .iter()
        .find(|(m, _)| m == name)
        .map(|(_, b)| *b)
        .ok_or_else(|| LstmError::File {
            path: ".keras archive".into(),
            reason: format!("no {name}"),
        })
}

/// The members of a stored (uncompressed) zip archive, in archive order: (name, contents).
///
/// ```
/// assert!(lstm_wgpu::archive::members(b"PK\x03\x04 truncated").is_err());
/// ```
pub fn members(data: &[u8]) -> Result<Vec<(String, &[u8])>> {
    let u16_at = |at: usize| -> Result<usize> {
        data.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| bad("truncated member header"))
    };
    let u32_at = |at: usize| -> Result<u32> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("truncated member header"))
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while data.get(at..at + 4) == Some(b"PK\x03\x04") {
        let flags = u16_at(at + 6)?;
        let method = u16_at(at + 8)?;
        let crc = u32_at(at + 14)?;
        let compressed = u32_at(at + 18)?;
        let uncompressed = u32_at(at + 22)?;
        let name_len = u16_at(at + 26)?;
        let extra_len = u16_at(at + 28)?;
        let name_at = at + 30;
        let name = data
            .get(name_at..name_at + name_len)
            .ok_or_else(|| bad("truncated member name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let extra = data
            .get(name_at + name_len..name_at + name_len + extra_len)
            .ok_or_else(|| bad(format!("{name}: truncated extra field")))?;
        let size = if compressed == u32::MAX || uncompressed == u32::MAX {
            zip64_size(extra, uncompressed == u32::MAX, compressed == u32::MAX)
                .ok_or_else(|| bad(format!("{name}: zip64 sizes without a zip64 extra field")))?
        } else {
            u64::from(compressed)
        };
        let size = usize::try_from(size)
            .map_err(|_| bad(format!("{name}: {size} bytes do not fit this platform")))?;
        if flags & 0x08 != 0 {
            return Err(bad(format!("{name}: data descriptors are not supported")));
        }
        if method != 0 {
            return Err(bad(format!(
                "{name}: compression method {method} (Keras stores members uncompressed)"
            )));
        }
        let body_at = name_at + name_len + extra_len;
        let body = body_at
            .checked_add(size)
            .and_then(|end| data.get(body_at..end))
            .ok_or_else(|| bad(format!("{name}: truncated ({size} bytes announced)")))?;
        if crc32(body) != crc {
            return Err(bad(format!("{name}: CRC-32 mismatch (corrupt archive)")));
        }
        out.push((name, body));
        at = body_at + size;
    }
    if out.is_empty() {
        return Err(bad("not a zip archive (no local file header at offset 0)"));
    }
    Ok(out)
}

/// The compressed size in a local header's zip64 extra field (ID 1), which holds the
/// uncompressed size first when `has_uncompressed`, then the compressed one when
/// `has_compressed`.
fn zip64_size(mut extra: &[u8], has_uncompressed: bool, has_compressed: bool) -> Option<u64> {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        let body = extra.get(4..4 + len)?;
        if id == 1 {
            let word = |k: usize| {
                body.get(8 * k..8 * k + 8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            };
            return match (has_uncompressed, has_compressed) {
                (true, true) => word(1),
                (false, true) => word(0),
                // only the uncompressed size moved: stored members have both equal
                (true, false) => word(0),
                (false, false) => None,
            };
        }
        extra = &extra[4 + len..];
    }
    None
}

/// A stored (uncompressed) zip archive of `members` (name, contents), as Keras writes a
/// `.keras` file; members past 4 GiB are refused.
///
/// ```
/// let zip = lstm_wgpu::archive::write(&[("config.json", b"{}")]).unwrap();
/// let back = lstm_wgpu::archive::members(&zip).unwrap();
/// assert_eq!(back, vec![("config.json".to_string(), &b"{}"[..])]);
/// ```
pub fn write(members: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, body) in members {
        let (len, at) = (u32::try_from(body.len()), u32::try_from(out.len()));
        let (Ok(len), Ok(at)) = (len, at) else {
            return Err(bad(format!(
                "member {name} lies past 4 GiB (zip64 is not written)"
            )));
        };
        let crc = crc32(body);
        let common = |v: &mut Vec<u8>| {
            v.extend(0u16.to_le_bytes()); // flags
            v.extend(0u16.to_le_bytes()); // stored
            v.extend(0u16.to_le_bytes()); // time
            v.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            v.extend(crc.to_le_bytes());
            v.extend(len.to_le_bytes());
            v.extend(len.to_le_bytes());
            v.extend((name.len() as u16).to_le_bytes());
        };
        out.extend(b"PK\x03\x04");
        out.extend(20u16.to_le_bytes());
        common(&mut out);
        out.extend(0u16.to_le_bytes()); // extra
        out.extend(name.as_bytes());
        out.extend(*body);
        central.extend(b"PK\x01\x02");
        central.extend(20u16.to_le_bytes()); // made by
        central.extend(20u16.to_le_bytes()); // needed
        common(&mut central);
        central.extend([0u8; 8]); // extra, comment, disk, internal attributes
        central.extend(0u32.to_le_bytes()); // external attributes
        central.extend(at.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let start = u32::try_from(out.len()).map_err(|_| bad("archive past 4 GiB"))?;
    let size = central.len() as u32;
    out.extend(central);
    out.extend(b"PK\x05\x06");
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend(size.to_le_bytes());
    out.extend(start.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// A stored member as Python's zipfile writes it with `force_zip64=True` (as Keras writes
    /// `model.weights.h5`): both sizes 0xFFFFFFFF, the real ones in the zip64 extra field.
    fn zip64_member(name: &str, body: &[u8]) -> Vec<u8> {
        let mut v = b"PK\x03\x04".to_vec();
        v.extend(45u16.to_le_bytes()); // version needed
        v.extend(0u16.to_le_bytes()); // flags
        v.extend(0u16.to_le_bytes()); // stored
        v.extend([0u8; 4]); // time, date
        v.extend(crc32(body).to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
        v.extend((name.len() as u16).to_le_bytes());
        v.extend(20u16.to_le_bytes());
        v.extend(name.as_bytes());
        v.extend(1u16.to_le_bytes());
        v.extend(16u16.to_le_bytes());
        v.extend((body.len() as u64).to_le_bytes());
        v.extend((body.len() as u64).to_le_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn zip64_members_are_read() {
        let mut zip = zip64_member("config.json", b"{}");
        zip.extend(zip64_member("model.weights.h5", b"weights"));
        let m = members(&zip).unwrap();
        assert_eq!(m[0], ("config.json".to_string(), &b"{}"[..]));
        assert_eq!(m[1].1, b"weights");
        // a zip64 header without its extra field is an error, not a 4 GiB read
        let mut broken = zip64_member("a", b"x");
        broken[28] = 0;
        broken[29] = 0;
        assert!(members(&broken).is_err());
    }
}
