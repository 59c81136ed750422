//! The optional region table of a dataset (`regions` in the dataset
//! description): a name and, optionally, MNI coordinates per region, so that
//! importance maps say "region 37 (x -13, y -32, z 1)" and can be drawn on a
//! glass brain. Schema in docs/data.md:
//!
//! ```text
//! index,name,x,y,z
//! 1,cc200_001,-39.6,-85.4,1.4
//! ```
//!
//! `index` counts the regions from 1 in the order of the scan files' region
//! axis (the column order of an AFNI .1D file, whose header is `#1 #2 ...`),
//! as atlases number their labels. Every region appears exactly once. `x`,
//! `y`, `z` are optional as a group: all three columns or none.

use std::path::Path;

use super::error::{shown, DataError, Result};

/// Names and (optionally) coordinates of the N regions, in region order.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionTable {
    pub names: Vec<String>,
    /// MNI (or any common space) centre of each region, millimetres; `None`
    /// when the table has no x, y, z columns.
    pub coordinates: Option<Vec<[f64; 3]>>,
}

fn bad(path: &Path, line: usize, message: String) -> DataError {
    DataError::RegionTable {
        path: shown(path),
        line,
        message,
    }
}

impl RegionTable {
    /// Reads the table and checks it against the dataset's region count.
    pub fn from_file(path: &Path, n_regions: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound {
                path: shown(path),
                what: "region table (`regions` in the dataset description)",
            },
            _ => DataError::io(path, e),
        })?;
        Self::parse(&text, path, n_regions)
    }

    /// Parses a comma- or tab-separated table whose header names `index` and
    /// `name` (and optionally `x`, `y`, `z`); `origin` names it in messages.
    pub fn parse(text: &str, origin: &Path, n_regions: usize) -> Result<Self> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((header_line, header)) = lines.next() else {
            return Err(bad(
                origin,
                1,
                "the file is empty; expected a header row `index,name` (optionally `,x,y,z`) and one row per region".into(),
            ));
        };
        let delimiter = if header.contains('\t') { '\t' } else { ',' };
        let columns: Vec<String> = header
            .split(delimiter)
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let find = |name: &str| columns.iter().position(|c| c == name);
        let (Some(index_col), Some(name_col)) = (find("index"), find("name")) else {
            return Err(bad(
                origin,
                header_line,
                format!(
                    "the header has columns {columns:?}; expected `index` and `name` (and optionally `x`, `y`, `z`)"
                ),
            ));
        };
        let xyz: Vec<Option<usize>> = ["x", "y", "z"].iter().map(|c| find(c)).collect();
        let xyz = match xyz.iter().filter(|c| c.is_some()).count() {
            0 => None,
            3 => Some([xyz[0].unwrap_or(0), xyz[1].unwrap_or(0), xyz[2].unwrap_or(0)]),
            _ => {
                return Err(bad(
                    origin,
                    header_line,
                    format!("the header has columns {columns:?}; expected all of `x`, `y`, `z` or none of them"),
                ))
            }
        };
        let mut names: Vec<Option<String>> = vec![None; n_regions];
        let mut coordinates = vec![[0.0f64; 3]; n_regions];
        let mut first_line = vec![0usize; n_regions];
        for (line, row) in lines {
            let cells: Vec<&str> = row.split(delimiter).map(str::trim).collect();
            if cells.len() != columns.len() {
                return Err(bad(
                    origin,
                    line,
                    format!(
                        "found {} cells; expected {} like the header (line {header_line})",
                        cells.len(),
                        columns.len()
                    ),
                ));
            }
            let index: usize = cells[index_col]
                .parse()
                .ok()
                .filter(|i| (1..=n_regions).contains(i))
                .ok_or_else(|| {
                    bad(
                        origin,
                        line,
                        format!(
                            "index \"{}\"; expected a region number from 1 to {n_regions} (the dataset's region count)",
                            cells[index_col]
                        ),
                    )
                })?;
            let r = index - 1;
            if names[r].is_some() {
                return Err(bad(
                    origin,
                    line,
                    format!(
                        "region {index} is listed twice (lines {} and {line})",
                        first_line[r]
                    ),
                ));
            }
            first_line[r] = line;
            let name = cells[name_col];
            names[r] = Some(if name.is_empty() {
                format!("region {index}")
            } else {
                name.to_string()
            });
            if let Some(cols) = xyz {
                for (axis, &col) in cols.iter().enumerate() {
                    coordinates[r][axis] = cells[col]
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            bad(
                                origin,
                                line,
                                format!(
                                    "{} = \"{}\"; expected a finite number (millimetres)",
                                    ["x", "y", "z"][axis],
                                    cells[col]
                                ),
                            )
                        })?;
                }
            }
        }
        let missing: Vec<usize> = (0..n_regions).filter(|&r| names[r].is_none()).collect();
        if !missing.is_empty() {
            let shown_missing: Vec<usize> = missing.iter().take(10).map(|r| r + 1).collect();
            return Err(bad(
                origin,
                header_line,
                format!(
                    "{} of the dataset's {n_regions} regions have no row (e.g. {shown_missing:?}); expected one row per region",
                    missing.len()
                ),
            ));
        }
        Ok(RegionTable {
            names: names.into_iter().flatten().collect(),
            coordinates: xyz.map(|_| coordinates),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, n: usize) -> Result<RegionTable> {
        RegionTable::parse(text, Path::new("atlas.csv"), n)
    }

    #[test]
    fn rows_land_at_their_index_in_any_order() {
        let t = parse("index,name,x,y,z\n2,b,4,5,6\n1,a,1,2,3\n", 2).unwrap();
        assert_eq!(t.names, vec!["a", "b"]);
        assert_eq!(t.coordinates, Some(vec![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]));
        let t = parse("name\tindex\n\nleft\t1\r\nright\t2\n", 2).unwrap();
        assert_eq!(t.names, vec!["left", "right"]);
        assert_eq!(t.coordinates, None);
    }

    #[test]
    fn bad_tables_name_the_line_and_what_was_expected() {
        let message = |text: &str, n: usize| parse(text, n).unwrap_err().to_string();
        assert_eq!(
            message("index,name\n1,a\n3,c\n", 2),
            "atlas.csv: line 3: invalid region table: index \"3\"; expected a region number from 1 to 2 (the dataset's region count)"
        );
        assert_eq!(
            message("index,name\n1,a\n1,b\n", 2),
            "atlas.csv: line 3: invalid region table: region 1 is listed twice (lines 2 and 3)"
        );
        assert_eq!(
            message("index,name\n1,a\n", 3),
            "atlas.csv: line 1: invalid region table: 2 of the dataset's 3 regions have no row (e.g. [2, 3]); expected one row per region"
        );
        assert_eq!(
            message("index,name,x,y\n1,a,0,0\n", 1),
            "atlas.csv: line 1: invalid region table: the header has columns [\"index\", \"name\", \"x\", \"y\"]; expected all of `x`, `y`, `z` or none of them"
        );
        assert_eq!(
            message("index,name,x,y,z\n1,a,0,nan,0\n", 1),
            "atlas.csv: line 2: invalid region table: y = \"nan\"; expected a finite number (millimetres)"
        );
        assert_eq!(
            message("index,name\n1,a,extra\n", 1),
            "atlas.csv: line 2: invalid region table: found 3 cells; expected 2 like the header (line 1)"
        );
        assert_eq!(
            message("id,label\n", 1),
            "atlas.csv: line 1: invalid region table: the header has columns [\"id\", \"label\"]; expected `index` and `name` (and optionally `x`, `y`, `z`)"
        );
        assert!(message("", 1).contains("the file is empty"));
    }
}
