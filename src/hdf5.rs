//! Reading HDF5 files (Keras weight files and whole-model `.h5` files), held in memory, with
//! the pure-Rust `hdf5-reader` crate (pinned; why this reader: docs/DESIGN.md). Every
//! format and layout that crate reads is read (superblock 0-3, both object-header versions,
//! compact, contiguous and chunked datasets with gzip and shuffle, variable-length and fixed
//! strings); datasets of float16, bfloat16 (a 2-byte float with an 8-bit exponent, or Keras's
//! `dtype="bfloat16"` mark), float32 and float64 come back as f32. Corrupt or truncated input
//! is an error, never a panic.

use crate::error::{LstmError, Result};
use hdf5_reader::{Datatype, Hdf5File};

/// An HDF5 file read from memory.
pub struct H5File<'a> {
    file: Hdf5File,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

/// A dataset read as f32: its shape and row-major values.
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

fn reader_error(what: &str, e: impl std::fmt::Display) -> LstmError {
    bad(format!("{what}: {e}"))
}

/// IEEE half precision to f32 (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let e = i32::from((h >> 10) & 0x1f);
    let m = f32::from(h & 0x3ff);
    match e {
        0 => sign * m * 2f32.powi(-24),
        31 if m == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + m / 1024.0) * 2f32.powi(e - 15),
    }
}

impl<'a> H5File<'a> {
    /// Parses the file's superblock and root group.
    ///
    /// ```
    /// assert!(lstm_wgpu::hdf5::H5File::new(b"not an hdf5 file").is_err());
    /// ```
    pub fn new(data: &'a [u8]) -> Result<Self> {
        let file =
            Hdf5File::from_bytes(data).map_err(|e| reader_error("not a readable HDF5 file", e))?;
        // (the root group is read here so that a file without one fails at once)
        file.root_group()
            .map_err(|e| reader_error("no root group", e))?;
        Ok(H5File {
            file,
            _bytes: std::marker::PhantomData,
        })
    }

    /// Whether an object (group or dataset) exists at `path` (`a/b/c`).
    pub fn exists(&self, path: &str) -> Result<bool> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some((last, parents)) = parts.split_last() else {
            return Ok(true);
        };
        let mut group = self
            .file
            .root_group()
            .map_err(|e| reader_error("root group", e))?;
        for part in parents {
            let (groups, _) = group.member_names().map_err(|e| reader_error(path, e))?;
            if !groups.iter().any(|g| g == part) {
                return Ok(false);
            }
            group = group.group(part).map_err(|e| reader_error(path, e))?;
        }
        let (groups, datasets) = group.member_names().map_err(|e| reader_error(path, e))?;
        Ok(groups.iter().chain(&datasets).any(|n| n == last))
    }

    /// The names in the group at `path`, sorted numerically where they are numbers.
    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        let group = self
            .file
            .group(path)
            .map_err(|e| reader_error(&format!("group {path}"), e))?;
        let (groups, datasets) = group.member_names().map_err(|e| reader_error(path, e))?;
        let mut names: Vec<String> = groups.into_iter().chain(datasets).collect();
        names.sort_by_key(|n| (n.parse::<u64>().unwrap_or(u64::MAX), n.clone()));
        Ok(names)
    }

    /// The string attribute `name` of the object at `path` (`""` for the root group): a
    /// scalar string, or a list of strings (variable-length or fixed); an empty numeric array
    /// (as Keras writes an empty `weight_names`) is an empty list.
    pub fn string_attribute(&self, path: &str, name: &str) -> Result<Vec<String>> {
        let what = format!(
            "attribute {name} of {}",
            if path.is_empty() { "/" } else { path }
        );
        let attr = if self.is_dataset(path)? {
            self.file.dataset(path).and_then(|d| d.attribute(name))
        } else {
            self.file.group(path).and_then(|g| g.attribute(name))
        }
        .map_err(|e| reader_error(&what, e))?;
        match &attr.datatype {
            Datatype::String { .. } | Datatype::VarLen { .. } => {
                attr.read_strings().map_err(|e| reader_error(&what, e))
            }
            _ if attr.shape.iter().product::<u64>() == 0 => Ok(Vec::new()),
            other => Err(bad(format!("{what}: not strings but {other:?}"))),
        }
    }

    /// Whether `path` names a dataset (else a group).
    fn is_dataset(&self, path: &str) -> Result<bool> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some((last, parents)) = parts.split_last() else {
            return Ok(false);
        };
        let parent = self
            .file
            .group(&parents.join("/"))
            .map_err(|e| reader_error(path, e))?;
        let (_, datasets) = parent.member_names().map_err(|e| reader_error(path, e))?;
        Ok(datasets.iter().any(|d| d == last))
    }

    /// Reads the one-element integer dataset at `path` exactly (Keras's int64
    /// `iterations`; a float dataset holding a whole number is read too).
    pub fn integer(&self, path: &str) -> Result<i64> {
        let d = self
            .file
            .dataset(path)
            .map_err(|e| reader_error(&format!("dataset {path}"), e))?;
        let err = |e| reader_error(path, e);
        let values: Vec<i64> = match d.dtype() {
            Datatype::FixedPoint {
                size: 8,
                signed: true,
                ..
            } => d.read_array::<i64>().map_err(err)?.into_iter().collect(),
            _ => self
                .dataset(path)?
                .values
                .iter()
                .map(|&v| {
                    if v.fract() == 0.0 && v.abs() < 16_777_216.0 {
                        Ok(v as i64)
                    } else {
                        Err(bad(format!("{path}: {v} is not an integer")))
                    }
                })
                .collect::<Result<_>>()?,
        };
        match values.as_slice() {
            [v] => Ok(*v),
            _ => Err(bad(format!(
                "{path}: {} values where one integer belongs",
                values.len()
            ))),
        }
    }

    /// Reads the numeric dataset at `path` as f32 (float16, bfloat16, float32, float64 and
    /// integer datasets; another type is an error naming it).
    pub fn dataset(&self, path: &str) -> Result<Dataset> {
        let d = self
            .file
            .dataset(path)
            .map_err(|e| reader_error(&format!("dataset {path}"), e))?;
        let shape: Vec<usize> = d
            .shape()
            .iter()
            .map(|&n| usize::try_from(n).map_err(|_| bad(format!("{path}: shape too large"))))
            .collect::<Result<_>>()?;
        let err = |e| reader_error(path, e);
        let values: Vec<f32> = match d.dtype() {
            Datatype::FloatingPoint { size: 4, .. } => {
                d.read_array::<f32>().map_err(err)?.into_iter().collect()
            }
            Datatype::FloatingPoint { size: 8, .. } => d
                .read_array::<f64>()
                .map_err(err)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            Datatype::FloatingPoint { size: 2, .. } => {
                // float16 (5-bit exponent) or bfloat16 (8-bit; Keras also marks it)
                let raw = d.raw_datatype().map_err(err)?;
                let marked = d
                    .attribute("dtype")
                    .ok()
                    .and_then(|a| a.read_string().ok())
                    .is_some_and(|s| s == "bfloat16");
                let bf16 = marked || raw.get(13) == Some(&8);
                let bytes = d.read_native_bytes().map_err(err)?;
                bytes
                    .chunks_exact(2)
                    .map(|c| {
                        let h = u16::from_le_bytes([c[0], c[1]]);
                        if bf16 {
                            f32::from_bits(u32::from(h) << 16)
                        } else {
                            f16_to_f32(h)
                        }
                    })
                    .collect()
            }
            // integers (a Normalization layer's `count`), exact up to 2^24
            Datatype::FixedPoint { size, signed, .. } => {
                let wide: Vec<f64> = match (size, signed) {
                    (1, true) => d
                        .read_array::<i8>()
                        .map_err(err)?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    (1, false) => d
                        .read_array::<u8>()
                        .map_err(err)?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    (2, true) => d
                        .read_array::<i16>()
                        .map_err(err)?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    (2, false) => d
                        .read_array::<u16>()
                        .map_err(err)?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    (4, true) => d
                        .read_array::<i32>()
                        .map_err(err)?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    (4, false) => d
                        .read_array::<u32>()
                        .map_err(err)?
                        .into_iter()
                        .map(f64::from)
                        .collect(),
                    (8, true) => d
                        .read_array::<i64>()
                        .map_err(err)?
                        .into_iter()
                        .map(|v| v as f64)
                        .collect(),
                    (8, false) => d
                        .read_array::<u64>()
                        .map_err(err)?
                        .into_iter()
                        .map(|v| v as f64)
                        .collect(),
                    other => {
                        return Err(bad(format!(
                            "{path}: an integer dataset of {other:?} (bytes, signed)"
                        )))
                    }
                };
                wide.into_iter().map(|v| v as f32).collect()
            }
            other => return Err(bad(format!("{path}: a {other:?} dataset, not a number"))),
        };
        if values.len() != shape.iter().product::<usize>() {
            return Err(bad(format!(
                "{path}: {} values for shape {shape:?}",
                values.len()
            )));
        }
        Ok(Dataset { shape, values })
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
