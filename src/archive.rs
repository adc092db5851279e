//! Reading the members of a `.keras` file: a zip archive whose members Keras stores without
//! compression. Each member's CRC-32 is checked; compressed members, zip64 and truncated or
//! corrupt archives are errors, never panics.

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
        let size = u32_at(at + 18)? as usize;
        let name_len = u16_at(at + 26)?;
        let extra_len = u16_at(at + 28)?;
        let name_at = at + 30;
        let name = data
            .get(name_at..name_at + name_len)
            .ok_or_else(|| bad("truncated member name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
