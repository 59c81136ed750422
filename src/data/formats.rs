//! Reading one scan file into an f32 array [regions N, time T].
//!
//! Every reader first produces a `RawTable` (the 2-D array as stored, row-major,
//! with its own row/column meaning), then `orient` turns it into [N, T] using the
//! configured orientation. Readers never panic on user data: sizes are checked
//! before indexing and every value is checked to be finite in f32.

use std::io::{Cursor, Read};
use std::path::Path;

use ndarray::Array2;

use super::config::{Format, Orientation, SkipColumns};
use super::error::{shown, DataError, Result};

/// How to read the files of one dataset (the file-level part of `DatasetConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOptions {
    pub format: Format,
    pub orientation: Orientation,
    pub array_name: Option<String>,
    pub skip_columns: SkipColumns,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            format: Format::Auto,
            orientation: Orientation::TimeByRegion,
            array_name: None,
            skip_columns: SkipColumns::None,
        }
    }
}

/// A 2-D array as stored in the file, row-major.
#[derive(Debug, Clone, PartialEq)]
struct RawTable {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

/// Reads one scan into [regions, time]. (`Dataset::load` warns when scans have
/// more regions than time points, which can mean the orientation is wrong.)
pub fn read_scan(path: &Path, options: &ReadOptions) -> Result<Array2<f32>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_scan(path, bytes, options)
}

/// Parses the bytes of one scan file into [regions, time]; `path` names the
/// file in errors and, with `Format::Auto`, picks the format by its
/// extension. (`read_scan` reads the file and calls this; the fuzz targets
/// call it directly.)
pub fn parse_scan(path: &Path, bytes: Vec<u8>, options: &ReadOptions) -> Result<Array2<f32>> {
    if bytes.is_empty() {
        return Err(DataError::EmptyScanFile {
            path: shown(path),
            what: "0 bytes",
            layout: options.orientation.layout(),
        });
    }
    let format = match options.format {
        Format::Auto => format_from_extension(path),
        explicit => explicit,
    };
    let raw = match format {
        Format::Npy => read_npy_bytes(path, &bytes)?,
        Format::Npz => read_npz(path, bytes, options.array_name.as_deref())?,
        Format::Mat => read_mat(path, &bytes, options.array_name.as_deref())?,
        Format::Text | Format::Auto => {
            let text = String::from_utf8(bytes).map_err(|e| DataError::BadNpy {
                path: shown(path),
                message: format!(
                    "not UTF-8 text at byte {} (is `format` right for this file?)",
                    e.utf8_error().valid_up_to()
                ),
            })?;
            parse_text_table(path, text.trim_start_matches('\u{feff}'), options)?
        }
    };
    let scan = orient(raw, options.orientation)?;
    if scan.nrows() > scan.ncols() {
        // Debug only: datasets warn once for all such scans (ABIDE has hundreds, legitimately).
        log::debug!(
            "{}: {} regions but only {} time points",
            path.display(),
            scan.nrows(),
            scan.ncols()
        );
    }
    Ok(scan)
}

/// `.npy`, `.npz`, `.mat`; anything else (`.1D`, `.txt`, `.csv`, `.tsv`, ...) is text.
pub fn format_from_extension(path: &Path) -> Format {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("npy") => Format::Npy,
        Some("npz") => Format::Npz,
        Some("mat") => Format::Mat,
        _ => Format::Text,
    }
}

fn orient(raw: RawTable, orientation: Orientation) -> Result<Array2<f32>> {
    let RawTable { rows, cols, values } = raw;
    let stored = Array2::from_shape_vec((rows, cols), values).map_err(|e| DataError::BadNpy {
        path: String::new(),
        message: format!("internal shape error: {e}"),
    })?;
    Ok(match orientation {
        Orientation::RegionByTime => stored,
        // A standard-layout copy, so later per-region passes read contiguous memory.
        Orientation::TimeByRegion => stored.t().as_standard_layout().into_owned(),
    })
}

// ---------------------------------------------------------------- text tables

#[derive(Debug, Clone, Copy, PartialEq)]
enum Delimiter {
    Tab,
    Comma,
    Semicolon,
    Whitespace,
}

impl Delimiter {
    fn detect(line: &str) -> Self {
        if line.contains('\t') {
            Delimiter::Tab
        } else if line.contains(',') {
            Delimiter::Comma
        } else if line.contains(';') {
            Delimiter::Semicolon
        } else {
            Delimiter::Whitespace
        }
    }

    fn split<'a>(self, line: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        match self {
            Delimiter::Tab => Box::new(line.split('\t').map(str::trim)),
            Delimiter::Comma => Box::new(line.split(',').map(str::trim)),
            Delimiter::Semicolon => Box::new(line.split(';').map(str::trim)),
            Delimiter::Whitespace => Box::new(line.split_whitespace()),
        }
    }
}

/// Parses a text table: `#` lines are comments (AFNI's `#1 #2 ...` header), an
/// optional first row whose cells are all non-numeric is a header (after the
/// skipped columns), and every other non-blank line is a data row.
/// Line and column numbers in errors are 1-based and count every column of the file.
fn parse_text_table(path: &Path, text: &str, options: &ReadOptions) -> Result<RawTable> {
    let skip = &options.skip_columns;
    let mut delimiter = None;
    let mut has_header = false; // a header row or `#` comment lines
    let mut keep: Option<Vec<bool>> = None; // per file column: is it data?
    let mut first_data_line = 0;
    let mut cols = 0;
    let mut rows = 0;
    let mut values: Vec<f32> = Vec::new();
    let mut cells: Vec<&str> = Vec::new();

    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = line.trim_end();
        if line.trim_start().is_empty() {
            continue;
        }
        if line.trim_start().starts_with('#') {
            has_header = true;
            continue;
        }
        let delimiter = *delimiter.get_or_insert_with(|| Delimiter::detect(line));
        cells.clear();
        cells.extend(delimiter.split(line));

        if keep.is_none() {
            // First non-comment row: decide which columns hold data and whether it
            // is a header (no numeric cell once the counted skip columns are dropped).
            let leading_skipped = match skip {
                SkipColumns::Count(k) => *k,
                _ => 0,
            };
            let is_header = cells
                .iter()
                .skip(leading_skipped)
                .all(|c| c.parse::<f64>().is_err());
            keep = Some(column_mask(path, &cells, is_header, skip)?);
            if is_header {
                has_header = true;
                continue;
            }
        }
        let Some(keep) = keep.as_ref() else {
            continue;
        };

        if rows == 0 {
            first_data_line = line_number;
            cols = keep.iter().filter(|&&k| k).count();
        }
        if cells.len() != keep.len() {
            return Err(DataError::RaggedRow {
                path: shown(path),
                line: line_number,
                found: cells.len(),
                expected: keep.len(),
                first_line: first_data_line,
            });
        }
        for (column_index, (cell, &is_data)) in cells.iter().zip(keep.iter()).enumerate() {
            if is_data {
                values.push(parse_cell(path, cell, line_number, column_index + 1)?);
            }
        }
        rows += 1;
    }

    if rows == 0 || cols == 0 {
        if !has_header {
            return Err(DataError::EmptyScanFile {
                path: shown(path),
                what: "only blank lines",
                layout: options.orientation.layout(),
            });
        }
        return Err(DataError::NoDataRows { path: shown(path) });
    }
    Ok(RawTable { rows, cols, values })
}

/// Which columns of the file are data, from `skip_columns` and the header (if any).
fn column_mask(
    path: &Path,
    cells: &[&str],
    is_header: bool,
    skip: &SkipColumns,
) -> Result<Vec<bool>> {
    let mut keep = vec![true; cells.len()];
    match skip {
        SkipColumns::None => {}
        SkipColumns::Count(k) => keep.iter_mut().take(*k).for_each(|k| *k = false),
        SkipColumns::Names(names) => {
            if !is_header {
                return Err(DataError::SkipColumnsWithoutHeader { path: shown(path) });
            }
            for name in names {
                let position = cells.iter().position(|c| c == name).ok_or_else(|| {
                    DataError::SkipColumnNotFound {
                        path: shown(path),
                        column: name.clone(),
                        available: cells.join(", "),
                    }
                })?;
                if let Some(k) = keep.get_mut(position) {
                    *k = false;
                }
            }
        }
    }
    Ok(keep)
}

fn parse_cell(path: &Path, cell: &str, line: usize, column: usize) -> Result<f32> {
    let value: f64 = cell.parse().map_err(|_| DataError::NotANumber {
        path: shown(path),
        line,
        column,
        found: cell.to_string(),
    })?;
    let narrowed = value as f32;
    if !narrowed.is_finite() {
        let found = if value.is_finite() {
            format!("{cell} (too large for float32)")
        } else {
            cell.to_string()
        };
        return Err(DataError::NonFiniteText {
            path: shown(path),
            line,
            column,
            found,
        });
    }
    Ok(narrowed)
}

// ---------------------------------------------------------------- .npy / .npz

fn read_npy_bytes(path: &Path, bytes: &[u8]) -> Result<RawTable> {
    let bad = |message: String| DataError::BadNpy {
        path: shown(path),
        message,
    };
    check_npy_nesting(bytes).map_err(bad)?;
    let mut cursor = Cursor::new(bytes);
    let header = npyz::NpyHeader::from_reader(&mut cursor)
        .map_err(|e| bad(format!("not a valid .npy file: {e}")))?;
    let header_length = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    let data = bytes.get(header_length..).unwrap_or(&[]);
    let npy = npyz::NpyFile::with_header(header, data);

    let dtype = npy.dtype();
    let element_size = match &dtype {
        npyz::DType::Plain(ts) if ts.type_char() == npyz::TypeChar::Float => {
            match ts.size_field() {
                4 => 4u64,
                8 => 8u64,
                _ => 0,
            }
        }
        _ => 0,
    };
    if element_size == 0 {
        return Err(DataError::UnsupportedDtype {
            path: shown(path),
            found: numpy_type_name(&dtype),
            expected: "float32 or float64 (<f4, <f8, >f4, >f8)",
        });
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let (rows, cols) = match shape.as_slice() {
        &[rows, cols] => (rows, cols),
        _ => {
            return Err(DataError::NotTwoDimensional {
                path: shown(path),
                found: shape,
            })
        }
    };
    // The element count from the shape, checked: npyz's own product
    // (`len`) overflows for a header such as shape (4715491176541352389, 6)
    // (found by the npy fuzz target), a panic with overflow checks and a
    // wrapped, wrong size without.
    let Some(expected) = [rows as u64, cols as u64, element_size]
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    else {
        return Err(bad(format!(
            "not a valid .npy file: its shape [{rows}, {cols}] holds more bytes than a file can"
        )));
    };
    let found = data.len() as u64;
    if found < expected {
        return Err(DataError::TruncatedNpy {
            path: shown(path),
            expected,
            found,
        });
    }
    if rows == 0 || cols == 0 {
        return Err(DataError::EmptyArray {
            path: shown(path),
            shape: vec![rows, cols],
        });
    }
    let fortran = npy.order() == npyz::Order::Fortran;
    let stored: Vec<f64> = if element_size == 4 {
        npy.into_vec::<f32>()
            .map_err(|e| bad(format!("cannot read data: {e}")))?
            .into_iter()
            .map(f64::from)
            .collect()
    } else {
        npy.into_vec::<f64>()
            .map_err(|e| bad(format!("cannot read data: {e}")))?
    };
    from_stored_order(path, rows, cols, &stored, fortran)
}

/// "int8 (|i1)": numpy's name for a dtype, then its type string.
/// Deepest bracket nesting a .npy header may have. A header is a Python
/// dict literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`
/// is 2 deep; a structured dtype with a sub-array field is 4 (and is refused
/// later anyway: only float32/float64 arrays are read).
const NPY_MAX_NESTING: usize = 4;

/// Refuses a header nested deeper than `NPY_MAX_NESTING`: npyz's header
/// parser takes time exponential in the depth (about 3x per `{`: 10 took
/// 12 s, 15 over a minute; found by the npy fuzz target). A file too short
/// to hold its header is left to npyz, which names that.
fn check_npy_nesting(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(rest) = bytes.strip_prefix(b"\x93NUMPY") else {
        return Ok(());
    };
    let (length, start) = match rest {
        [1, _, a, b, ..] => (usize::from(u16::from_le_bytes([*a, *b])), 10),
        [2 | 3, _, a, b, c, d, ..] => (
            usize::try_from(u32::from_le_bytes([*a, *b, *c, *d])).unwrap_or(usize::MAX),
            12,
        ),
        _ => return Ok(()),
    };
    let header = &bytes[start.min(bytes.len())..start.saturating_add(length).min(bytes.len())];
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in header {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > NPY_MAX_NESTING {
        return Err(format!(
            "not a valid .npy file: its header nests brackets {deepest} deep; a .npy header \
             is a dict of 'descr', 'fortran_order' and 'shape', at most {NPY_MAX_NESTING} deep"
        ));
    }
    Ok(())
}

fn numpy_type_name(dtype: &npyz::DType) -> String {
    let descr = dtype.descr().trim_matches('\'').to_string();
    let npyz::DType::Plain(ts) = dtype else {
        return format!("structured ({descr})");
    };
    let bits = ts.size_field() * 8;
    let name = match ts.type_char() {
        npyz::TypeChar::Bool => "bool".to_string(),
        npyz::TypeChar::Int => format!("int{bits}"),
        npyz::TypeChar::Uint => format!("uint{bits}"),
        npyz::TypeChar::Float => format!("float{bits}"),
        npyz::TypeChar::Complex => format!("complex{bits}"),
        _ => return descr,
    };
    format!("{name} ({descr})")
}

/// Builds a row-major table from values stored row-major (C) or column-major
/// (Fortran, MATLAB), checking each value is finite in f32.
fn from_stored_order(
    path: &Path,
    rows: usize,
    cols: usize,
    stored: &[f64],
    column_major: bool,
) -> Result<RawTable> {
    if stored.len() != rows.saturating_mul(cols) {
        return Err(DataError::BadNpy {
            path: shown(path),
            message: format!(
                "shape [{rows}, {cols}] needs {} values but {} were read",
                rows.saturating_mul(cols),
                stored.len()
            ),
        });
    }
    let mut values = vec![0f32; stored.len()];
    for (flat, &value) in stored.iter().enumerate() {
        let (row, col) = if column_major {
            (flat % rows, flat / rows)
        } else {
            (flat / cols, flat % cols)
        };
        let narrowed = value as f32;
        if !narrowed.is_finite() {
            return Err(DataError::NonFiniteArray {
                path: shown(path),
                row,
                column: col,
                found: if value.is_finite() {
                    format!("{value} (too large for float32)")
                } else {
                    format!("{value}")
                },
            });
        }
        if let Some(slot) = values.get_mut(row * cols + col) {
            *slot = narrowed;
        }
    }
    Ok(RawTable { rows, cols, values })
}

fn read_npz(path: &Path, bytes: Vec<u8>, array_name: Option<&str>) -> Result<RawTable> {
    let bad = |message: String| DataError::BadNpy {
        path: shown(path),
        message,
    };
    let mut archive = npyz::npz::NpzArchive::new(Cursor::new(bytes))
        .map_err(|e| bad(format!("not a valid .npz archive: {e}")))?;
    let names: Vec<String> = archive.array_names().map(str::to_string).collect();
    let name = match array_name {
        Some(name) => name.to_string(),
        None => match names.as_slice() {
            [only] => only.clone(),
            _ => {
                return Err(DataError::AmbiguousArray {
                    path: shown(path),
                    available: names.join(", "),
                })
            }
        },
    };
    if !names.contains(&name) {
        return Err(DataError::ArrayNotFound {
            path: shown(path),
            name,
            available: names.join(", "),
        });
    }
    let mut entry = archive
        .zip_archive()
        .by_name(&npyz::npz::file_name_from_array_name(&name))
        .map_err(|e| bad(format!("cannot open array \"{name}\": {e}")))?;
    let mut inner = Vec::new();
    entry
        .read_to_end(&mut inner)
        .map_err(|e| bad(format!("cannot read array \"{name}\": {e}")))?;
    read_npy_bytes(path, &inner)
}

// ---------------------------------------------------------------- .mat (v5)

/// HDF5's 8-byte signature; a v7.3 MAT-file puts it at byte 512, after
/// MATLAB's own 512-byte user block.
const HDF5_SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";

fn read_mat(path: &Path, bytes: &[u8], variable: Option<&str>) -> Result<RawTable> {
    let is_hdf5 = bytes.starts_with(b"MATLAB 7.3 MAT-file")
        || [0, 512, 1024, 2048].iter().any(|&offset| {
            bytes
                .get(offset..offset + HDF5_SIGNATURE.len())
                .is_some_and(|b| b == HDF5_SIGNATURE)
        });
    if is_hdf5 {
        return Err(DataError::MatV73 { path: shown(path) });
    }
    check_mat_sizes(bytes).map_err(|message| DataError::BadMat {
        path: shown(path),
        message: format!("a damaged MATLAB v5/v7 MAT-file: {message}"),
    })?;
    let mat = matfile::MatFile::parse(Cursor::new(bytes)).map_err(|e| DataError::BadMat {
        path: shown(path),
        // matfile's own message says only "An error occurred while parsing the
        // file"; the header text tells a damaged MAT-file from something else.
        message: if bytes.starts_with(b"MATLAB 5.0 MAT-file") {
            format!("a damaged MATLAB v5/v7 MAT-file ({e})")
        } else {
            "not a MATLAB v5/v7 MAT-file: it does not start with the header text \"MATLAB 5.0 MAT-file\"".to_string()
        },
    })?;
    let names: Vec<String> = mat.arrays().iter().map(|a| a.name().to_string()).collect();
    let array = match variable {
        Some(name) => mat
            .find_by_name(name)
            .ok_or_else(|| DataError::ArrayNotFound {
                path: shown(path),
                name: name.to_string(),
                available: names.join(", "),
            })?,
        None => match mat.arrays().as_slice() {
            [only] => only,
            _ => {
                return Err(DataError::AmbiguousArray {
                    path: shown(path),
                    available: names.join(", "),
                })
            }
        },
    };
    let (rows, cols) = match array.size().as_slice() {
        &[rows, cols] => (rows, cols),
        other => {
            return Err(DataError::NotTwoDimensional {
                path: shown(path),
                found: other.to_vec(),
            })
        }
    };
    let unsupported = |found: &str| DataError::UnsupportedDtype {
        path: shown(path),
        found: found.to_string(),
        expected: "real single or double",
    };
    let stored: Vec<f64> = match array.data() {
        matfile::NumericData::Double { real, imag: None } => real.clone(),
        matfile::NumericData::Single { real, imag: None } => {
            real.iter().map(|&v| f64::from(v)).collect()
        }
        matfile::NumericData::Double { .. } => return Err(unsupported("complex double")),
        matfile::NumericData::Single { .. } => return Err(unsupported("complex single")),
        other => return Err(unsupported(mat_type_name(other))),
    };
    if rows == 0 || cols == 0 {
        return Err(DataError::EmptyArray {
            path: shown(path),
            shape: vec![rows, cols],
        });
    }
    // MATLAB stores column-major.
    from_stored_order(path, rows, cols, &stored, true)
}

/// Checks the sizes matfile trusts before it parses: every data element
/// fits in what holds it, and no array's dimensions multiply past i32.
/// matfile 0.5 computes both without checks (found by the mat fuzz target:
/// an element of 0xFFFFFFF9+ bytes overflows its padding, dimensions such
/// as 65536 x 65536 overflow their product); in a release build that wraps
/// silently. Compressed elements are inflated and checked inside.
/// A file too short for its header is left to matfile, which names that.
fn check_mat_sizes(bytes: &[u8]) -> std::result::Result<(), String> {
    let little = match bytes.get(126..128) {
        Some(b"IM") => true,
        Some(b"MI") => false,
        _ => return Ok(()),
    };
    check_mat_elements(&bytes[128..], 128, little, "", 0)
}

const MAT_MAX_DEPTH: usize = 32;

fn check_mat_elements(
    data: &[u8],
    base: usize,
    little: bool,
    within: &str,
    depth: usize,
) -> std::result::Result<(), String> {
    if depth > MAT_MAX_DEPTH {
        return Err(format!(
            "elements nest more than {MAT_MAX_DEPTH} deep{within}"
        ));
    }
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let mut offset = 0usize;
    while let Some(first) = word(offset) {
        let at = base + offset;
        if first & 0xFFFF_0000 != 0 {
            // Small data element: type, size and up to 4 bytes in 8.
            offset += 8;
            continue;
        }
        let Some(size) = word(offset + 4) else {
            return Ok(());
        };
        let start = offset + 8;
        let remaining = data.len().saturating_sub(start);
        if size as usize > remaining {
            return Err(format!(
                "the data element at byte {at}{within} declares {size} bytes but only {remaining} follow"
            ));
        }
        let body = &data[start..start + size as usize];
        match first {
            // miMATRIX: flags, dimensions, name, data (or nested arrays).
            14 => {
                check_mat_elements(body, base + start, little, within, depth + 1)?;
                check_mat_dimensions(body, base + start, little, within)?;
            }
            // miCOMPRESSED: a zlib stream of further elements.
            15 if depth == 0 => {
                let mut inflated = Vec::new();
                if libflate::zlib::Decoder::new(body)
                    .and_then(|mut d| d.read_to_end(&mut inflated))
                    .is_ok()
                {
                    let within = format!(" (inflated from the compressed element at byte {at})");
                    check_mat_elements(&inflated, 0, little, &within, depth + 1)?;
                }
            }
            _ => {}
        }
        // Uncompressed elements are padded to 8 bytes.
        offset = start
            + if first == 15 {
                size as usize
            } else {
                (size as usize).div_ceil(8) * 8
            };
    }
    Ok(())
}

/// The dimensions of an miMATRIX (its second subelement, int32s): none
/// negative, and their product within i32.
fn check_mat_dimensions(
    body: &[u8],
    base: usize,
    little: bool,
    within: &str,
) -> std::result::Result<(), String> {
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = body.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    // Skip the flags subelement (always 16 bytes when well formed).
    let Some(flags) = word(0) else {
        return Ok(());
    };
    let offset = if flags & 0xFFFF_0000 != 0 {
        8
    } else {
        match word(4) {
            Some(size) => 8 + (size as usize).div_ceil(8) * 8,
            None => return Ok(()),
        }
    };
    let Some(tag) = word(offset) else {
        return Ok(());
    };
    let (count, start) = if tag & 0xFFFF_0000 != 0 {
        ((tag >> 16) as usize / 4, offset + 4)
    } else {
        match word(offset + 4) {
            Some(size) => (size as usize / 4, offset + 8),
            None => return Ok(()),
        }
    };
    let mut dims = Vec::new();
    for k in 0..count {
        match word(start + 4 * k) {
            Some(d) => dims.push(d as i32),
            None => return Ok(()),
        }
    }
    if dims.iter().any(|&d| d < 0)
        || dims
            .iter()
            .try_fold(1i32, |p, &d| p.checked_mul(d))
            .is_none()
    {
        return Err(format!(
            "the array at byte {base}{within} has dimensions {dims:?}; \
             expected non-negative sizes whose product fits in 2^31 - 1 elements"
        ));
    }
    Ok(())
}

fn mat_type_name(data: &matfile::NumericData) -> &'static str {
    use matfile::NumericData::*;
    match data {
        Int8 { .. } => "int8",
        UInt8 { .. } => "uint8",
        Int16 { .. } => "int16",
        UInt16 { .. } => "uint16",
        Int32 { .. } => "int32",
        UInt32 { .. } => "uint32",
        Int64 { .. } => "int64",
        UInt64 { .. } => "uint64",
        Single { .. } => "single",
        Double { .. } => "double",
    }
}

// ---------------------------------------------------------------- writing (synthetic data, tests)

/// Writes a 2-D f32 array as a C-order `.npy` file of shape [rows, cols].
pub fn write_npy_f32(path: &Path, array: &Array2<f32>) -> Result<()> {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).map_err(|e| DataError::write(path, e))?;
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[array.nrows() as u64, array.ncols() as u64])
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(|e| DataError::write(path, e))?;
    writer
        .extend(array.iter().copied())
        .map_err(|e| DataError::write(path, e))?;
    writer.finish().map_err(|e| DataError::write(path, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ndarray::array;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A hand-built .npy: `descr` like "<f8", shape, fortran flag, raw little-endian data.
    pub(crate) fn npy_bytes(descr: &str, shape: &[usize], fortran: bool, data: &[u8]) -> Vec<u8> {
        let shape_text = match shape {
            [a] => format!("({a},)"),
            _ => format!(
                "({})",
                shape
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_text}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    fn f64_bytes(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A minimal uncompressed MATLAB v5 file holding one real double matrix.
    pub(crate) fn mat_v5_bytes(
        name: &str,
        rows: usize,
        cols: usize,
        column_major: &[f64],
    ) -> Vec<u8> {
        fn element(data_type: u32, payload: &[u8]) -> Vec<u8> {
            let mut out = data_type.to_le_bytes().to_vec();
            out.extend((payload.len() as u32).to_le_bytes());
            out.extend(payload);
            while out.len() % 8 != 0 {
                out.push(0);
            }
            out
        }
        const MI_INT8: u32 = 1;
        const MI_INT32: u32 = 5;
        const MI_UINT32: u32 = 6;
        const MI_DOUBLE: u32 = 9;
        const MI_MATRIX: u32 = 14;
        const MX_DOUBLE_CLASS: u32 = 6;
        let mut body = element(
            MI_UINT32,
            &[MX_DOUBLE_CLASS.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        );
        body.extend(element(
            MI_INT32,
            &[(rows as i32).to_le_bytes(), (cols as i32).to_le_bytes()].concat(),
        ));
        body.extend(element(MI_INT8, name.as_bytes()));
        body.extend(element(MI_DOUBLE, &f64_bytes(column_major)));
        let mut file = vec![b' '; 116];
        file[..22].copy_from_slice(b"MATLAB 5.0 MAT-file, x");
        file.extend([0u8; 8]); // subsystem data offset
        file.extend(0x0100u16.to_le_bytes());
        file.extend(b"IM");
        file.extend(MI_MATRIX.to_le_bytes());
        file.extend((body.len() as u32).to_le_bytes());
        file.extend(body);
        file
    }

    #[test]
    fn data_afni_1d_with_comment_header_is_time_by_region() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "s_rois.1D", b"#1\t#2\t#3\n1\t2\t3\n4\t5\t6\n");
        let scan = read_scan(&path, &ReadOptions::default()).unwrap();
        assert_eq!(scan, array![[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]);
    }

    #[test]
    fn csv_with_named_header_and_skipped_columns() {
        let dir = tempfile::tempdir().unwrap();
        // Starts with a byte-order mark, as spreadsheet exports do.
        let text = "\u{feff}File,Sub-brick,Mean_1,Mean_2\n/a.nii,0,1.5,2.5\n/a.nii,1,3.5,4.5\n";
        let path = write(dir.path(), "adhd.csv", text.as_bytes());
        let options = ReadOptions {
            skip_columns: SkipColumns::Names(vec!["File".into(), "Sub-brick".into()]),
            ..ReadOptions::default()
        };
        let scan = read_scan(&path, &options).unwrap();
        assert_eq!(scan, array![[1.5, 3.5], [2.5, 4.5]]);
        let by_count = ReadOptions {
            skip_columns: SkipColumns::Count(2),
            ..ReadOptions::default()
        };
        assert_eq!(read_scan(&path, &by_count).unwrap(), scan);
    }

    #[test]
    fn whitespace_and_semicolon_tables_and_region_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "w.txt", b"  1  2   3\n4 5 6\n\n");
        let options = ReadOptions {
            orientation: Orientation::RegionByTime,
            ..ReadOptions::default()
        };
        assert_eq!(
            read_scan(&path, &options).unwrap(),
            array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
        );
        let path = write(dir.path(), "s.tsv", b"1;2\r\n3;4\r\n");
        assert_eq!(
            read_scan(&path, &ReadOptions::default()).unwrap(),
            array![[1.0, 3.0], [2.0, 4.0]]
        );
    }

    #[test]
    fn npy_float32_float64_c_and_fortran_order() {
        let dir = tempfile::tempdir().unwrap();
        // Stored array [[1,2,3],[4,5,6]] (time 2, regions 3).
        let c64 = npy_bytes("<f8", &[2, 3], false, &f64_bytes(&[1., 2., 3., 4., 5., 6.]));
        let f64_fortran = npy_bytes("<f8", &[2, 3], true, &f64_bytes(&[1., 4., 2., 5., 3., 6.]));
        let c32_data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c32 = npy_bytes("<f4", &[2, 3], false, &c32_data);
        let expected = array![[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]];
        for (name, bytes) in [("a.npy", c64), ("b.npy", f64_fortran), ("c.npy", c32)] {
            let path = write(dir.path(), name, &bytes);
            assert_eq!(
                read_scan(&path, &ReadOptions::default()).unwrap(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn npy_written_by_us_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let stored = array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let path = dir.path().join("w.npy");
        write_npy_f32(&path, &stored).unwrap();
        let scan = read_scan(&path, &ReadOptions::default()).unwrap();
        assert_eq!(scan, stored.t());
    }

    #[test]
    fn npz_named_array() {
        use npyz::WriterBuilder;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npz");
        {
            let mut npz = npyz::npz::NpzWriter::create(&path).unwrap();
            for (name, offset) in [("other", 100.0f64), ("ts", 0.0)] {
                let mut writer = npz
                    .array::<f64>(name, Default::default())
                    .unwrap()
                    .default_dtype()
                    .shape(&[2, 2])
                    .begin_nd()
                    .unwrap();
                writer.extend([1.0 + offset, 2.0, 3.0, 4.0]).unwrap();
                writer.finish().unwrap();
            }
        }
        let options = ReadOptions {
            array_name: Some("ts".into()),
            ..ReadOptions::default()
        };
        assert_eq!(
            read_scan(&path, &options).unwrap(),
            array![[1.0, 3.0], [2.0, 4.0]]
        );
        let err = read_scan(&path, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::AmbiguousArray { .. }), "{err}");
    }

    #[test]
    fn mat_v5_named_variable_is_column_major() {
        let dir = tempfile::tempdir().unwrap();
        // MATLAB matrix [[1,2,3],[4,5,6]] (2 time points x 3 regions), stored column-major.
        let bytes = mat_v5_bytes("tc", 2, 3, &[1., 4., 2., 5., 3., 6.]);
        let path = write(dir.path(), "s.mat", &bytes);
        let options = ReadOptions {
            array_name: Some("tc".into()),
            ..ReadOptions::default()
        };
        assert_eq!(
            read_scan(&path, &options).unwrap(),
            array![[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
        );
        let wrong = ReadOptions {
            array_name: Some("ROISignals".into()),
            ..ReadOptions::default()
        };
        let err = read_scan(&path, &wrong).unwrap_err().to_string();
        assert!(
            err.contains("no array named \"ROISignals\"; the file holds: tc"),
            "{err}"
        );
    }

    #[test]
    fn format_override_reads_text_with_odd_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "s.npy", b"1 2\n3 4\n");
        let options = ReadOptions {
            format: Format::Text,
            ..ReadOptions::default()
        };
        assert_eq!(
            read_scan(&path, &options).unwrap(),
            array![[1.0, 3.0], [2.0, 4.0]]
        );
    }
}
