//! Every bad input the data layer handles, one row per case: build a small
//! dataset in a temp dir, break one thing, load it, and compare the error
//! message word for word (with the temp dir shown as `<dir>`).
//! `docs/data.md` lists the same cases for users.

use std::fs;
use std::path::{Path, PathBuf};

use stptf::data::Dataset;

const BASE_TOML: &str = r#"
files = "*.txt"
orientation = "time_by_region"
[labels]
table = "labels.csv"
id_column = "id"
label_column = "dx"
classes = [{ value = "0", name = "control" }, { value = "1", name = "patient" }]
subject_column = "subject"
site_column = "site"
[preprocess]
crop_length = 4
"#;

const BASE_LABELS: &str = "id,dx,subject,site\ns1,0,p1,A\ns2,1,p2,A\ns3,0,p3,B\ns4,1,p4,B\n";

/// A 6-frame, 3-region text scan whose values depend on `seed`.
fn table(seed: usize) -> String {
    let mut text = String::from("# time x regions\n");
    for t in 0..6 {
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            t + seed,
            (t * t + seed) % 7,
            t * seed
        ));
    }
    text
}

/// A hand-built .npy file.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
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

fn f64_bytes(values: impl IntoIterator<Item = f64>) -> Vec<u8> {
    values.into_iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The good dataset: four scans, two classes, two sites.
fn good(dir: &Path) {
    for i in 1..=4 {
        fs::write(dir.join(format!("s{i}.txt")), table(i)).unwrap();
    }
    fs::write(dir.join("labels.csv"), BASE_LABELS).unwrap();
    fs::write(dir.join("dataset.toml"), BASE_TOML).unwrap();
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "case setup: {file} has no {from:?}");
    fs::write(path, text.replacen(from, to, 1)).unwrap();
}

struct Case {
    name: &'static str,
    /// Breaks the good dataset; returns a `--data` override if the case needs one.
    setup: fn(&Path) -> Option<PathBuf>,
    expected: &'static str,
}

fn cases() -> Vec<Case> {
    #[allow(unused_mut)]
    let mut cases = vec![
        Case {
            name: "missing data directory",
            setup: |dir| Some(dir.join("nope")),
            expected: "<dir>/nope: data directory does not exist",
        },
        Case {
            name: "missing labels table",
            setup: |dir| {
                fs::remove_file(dir.join("labels.csv")).unwrap();
                None
            },
            expected: "<dir>/labels.csv: labels table does not exist",
        },
        Case {
            name: "glob matches no file",
            setup: |dir| {
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>: no file matches \"*.npy\"",
        },
        Case {
            name: "typo in the dataset description",
            setup: |dir| {
                edit(dir, "dataset.toml", "label_column", "lable_column");
                None
            },
            expected: "<dir>/dataset.toml: line 7: invalid dataset description: unknown field `lable_column`, expected one of `table`, `id_column`, `id_from_file_name`, `label_column`, `classes`, `subject_column`, `site_column`, `missing_values`",
        },
        Case {
            // Out of range is reported as out of range, not as a type mix-up.
            name: "negative crop length",
            setup: |dir| {
                edit(dir, "dataset.toml", "crop_length = 4", "crop_length = -1");
                None
            },
            expected: "<dir>/dataset.toml: line 12: invalid dataset description: invalid value: integer `-1`, expected usize",
        },
        Case {
            name: "crop length beyond TOML's integers",
            setup: |dir| {
                edit(dir, "dataset.toml", "crop_length = 4", "crop_length = 99999999999999999999");
                None
            },
            expected: "<dir>/dataset.toml: line 12: invalid dataset description: number too large to fit in target type",
        },
        Case {
            name: "empty file",
            setup: |dir| {
                fs::write(dir.join("s2.txt"), "").unwrap();
                None
            },
            expected: "<dir>/s2.txt: scan file is empty (0 bytes); expected a table of numbers (rows = time points, columns = regions)",
        },
        Case {
            name: "empty file, regions by time",
            setup: |dir| {
                fs::write(dir.join("s2.txt"), "").unwrap();
                edit(dir, "dataset.toml", "time_by_region", "region_by_time");
                None
            },
            expected: "<dir>/s2.txt: scan file is empty (0 bytes); expected a table of numbers (rows = regions, columns = time points)",
        },
        Case {
            name: "only blank lines",
            setup: |dir| {
                fs::write(dir.join("s2.txt"), "\n  \n\t\n").unwrap();
                None
            },
            expected: "<dir>/s2.txt: scan file is empty (only blank lines); expected a table of numbers (rows = time points, columns = regions)",
        },
        Case {
            // An AFNI .1D whose "#1 #2 #3" header is all there is.
            name: "AFNI comment header but no data rows",
            setup: |dir| {
                fs::write(dir.join("s2.txt"), "#1\t#2\t#3\n").unwrap();
                None
            },
            expected: "<dir>/s2.txt: has a header but no data rows; expected at least one row of numbers",
        },
        Case {
            name: "header row but no data rows",
            setup: |dir| {
                fs::write(dir.join("s2.txt"), "a\tb\tc\n").unwrap();
                None
            },
            expected: "<dir>/s2.txt: has a header but no data rows; expected at least one row of numbers",
        },
        Case {
            name: ".npy with no time points",
            setup: |dir| {
                fs::write(dir.join("s1.npy"), npy("<f8", "(0, 3)", &[])).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>/s1.npy: the array has shape [0, 3]; expected at least one time point and one region",
        },
        Case {
            name: "0-byte labels table",
            setup: |dir| {
                fs::write(dir.join("labels.csv"), "").unwrap();
                None
            },
            expected: "<dir>/labels.csv: labels table is empty; expected a CSV or TSV table whose header row names the id column \"id\" and the label column \"dx\"",
        },
        Case {
            name: "labels table with a header only",
            setup: |dir| {
                fs::write(dir.join("labels.csv"), "id,dx,subject,site\n\n").unwrap();
                None
            },
            expected: "<dir>/labels.csv: labels table has a header but no data rows; expected one row per scan",
        },
        Case {
            name: "non-numeric cell",
            setup: |dir| {
                fs::write(dir.join("s2.txt"), "1\t2\t3\n4\tabc\t6\n").unwrap();
                None
            },
            expected: "<dir>/s2.txt: line 2, column 2: expected a number, found \"abc\"",
        },
        Case {
            name: "NaN in a text table",
            setup: |dir| {
                fs::write(dir.join("s3.txt"), "# x\n1\t2\t3\n4\t5\t6\n7\t8\tNaN\n").unwrap();
                None
            },
            expected: "<dir>/s3.txt: line 4, column 3: found NaN; expected a finite number",
        },
        Case {
            name: "Inf in a text table",
            setup: |dir| {
                fs::write(dir.join("s3.txt"), "1\t-inf\t3\n").unwrap();
                None
            },
            expected: "<dir>/s3.txt: line 1, column 2: found -inf; expected a finite number",
        },
        Case {
            name: "value too large for float32",
            setup: |dir| {
                fs::write(dir.join("s3.txt"), "1\t2\t3\n1e300\t2\t3\n").unwrap();
                None
            },
            expected: "<dir>/s3.txt: line 2, column 1: found 1e300 (too large for float32); expected a finite number",
        },
        Case {
            name: "ragged rows",
            setup: |dir| {
                fs::write(dir.join("s4.txt"), "#h\n1\t2\t3\n4\t5\n").unwrap();
                None
            },
            expected: "<dir>/s4.txt: line 3 has 2 columns; expected 3 like the first data row (line 2)",
        },
        Case {
            name: "region count differs from the rest",
            setup: |dir| {
                fs::write(dir.join("s3.txt"), "1\t2\t3\t4\n5\t6\t7\t8\n").unwrap();
                None
            },
            expected: "<dir>/s3.txt: 4 regions, but 3 of the 4 files have 3 (e.g. <dir>/s1.txt)",
        },
        Case {
            // The majority is right even when the odd file is the first one read.
            name: "region count of the first file differs from the rest",
            setup: |dir| {
                fs::write(dir.join("s1.txt"), "1\t2\n5\t6\n").unwrap();
                None
            },
            expected: "<dir>/s1.txt: 2 regions, but 3 of the 4 files have 3 (e.g. <dir>/s2.txt)",
        },
        Case {
            name: "skip_columns names a column the header lacks",
            setup: |dir| {
                fs::write(dir.join("s1.txt"), "File,Mean_1,Mean_2,Mean_3\nx,1,2,3\n").unwrap();
                edit(dir, "dataset.toml", "files =", "skip_columns = [\"File\", \"Sub-brick\"]\nfiles =");
                None
            },
            expected: "<dir>/s1.txt: skip_columns names \"Sub-brick\" but the header has no such column (header: File, Mean_1, Mean_2, Mean_3)",
        },
        Case {
            name: "truncated .npy",
            setup: |dir| {
                fs::write(dir.join("s1.npy"), npy("<f8", "(6, 3)", &[0u8; 10])).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>/s1.npy: truncated .npy: the header promises 144 bytes of data but the file holds 10",
        },
        Case {
            name: "not an .npy file at all",
            setup: |dir| {
                fs::write(dir.join("s1.npy"), b"hello").unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>/s1.npy: not a valid .npy file: magic not found for NPY file",
        },
        Case {
            name: "int8 .npy",
            setup: |dir| {
                fs::write(dir.join("s1.npy"), npy("|i1", "(2, 3)", &[1u8; 6])).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>/s1.npy: unsupported data type int8 (|i1); expected float32 or float64 (<f4, <f8, >f4, >f8)",
        },
        Case {
            name: "complex .npy",
            setup: |dir| {
                fs::write(dir.join("s1.npy"), npy("<c16", "(1, 2)", &[0u8; 32])).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>/s1.npy: unsupported data type complex128 (<c16); expected float32 or float64 (<f4, <f8, >f4, >f8)",
        },
        Case {
            name: "3-D .npy",
            setup: |dir| {
                fs::write(dir.join("s1.npy"), npy("<f8", "(1, 2, 1)", &f64_bytes([1.0, 2.0]))).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>/s1.npy: expected a 2-D array [time, regions] or [regions, time], found shape [1, 2, 1]",
        },
        Case {
            name: "NaN in an .npy",
            setup: |dir| {
                fs::write(dir.join("s1.npy"), npy("<f8", "(2, 2)", &f64_bytes([1.0, 2.0, 3.0, f64::NAN]))).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.npy");
                None
            },
            expected: "<dir>/s1.npy: element [1, 1] (0-based, as stored) is NaN; expected a finite number",
        },
        Case {
            name: "not a MATLAB file",
            setup: |dir| {
                fs::write(dir.join("s1.mat"), b"not a mat file").unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.mat");
                None
            },
            expected: "<dir>/s1.mat: cannot read MATLAB file: not a MATLAB v5/v7 MAT-file: it does not start with the header text \"MATLAB 5.0 MAT-file\"",
        },
        Case {
            name: "damaged MATLAB v5 file",
            setup: |dir| {
                let mut bytes = b"MATLAB 5.0 MAT-file, Platform: GLNXA64".to_vec();
                bytes.resize(130, b' ');
                fs::write(dir.join("s1.mat"), bytes).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.mat");
                None
            },
            expected: "<dir>/s1.mat: cannot read MATLAB file: a damaged MATLAB v5/v7 MAT-file (An error occurred while parsing the file)",
        },
        Case {
            // What MATLAB's save -v7.3 writes: a 512-byte text block, then HDF5.
            name: "MATLAB v7.3 (HDF5) file",
            setup: |dir| {
                let mut bytes = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".to_vec();
                bytes.resize(512, b' ');
                bytes.extend(b"\x89HDF\r\n\x1a\n");
                bytes.resize(2048, 0);
                fs::write(dir.join("s1.mat"), bytes).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.mat");
                None
            },
            expected: "<dir>/s1.mat: a MATLAB v7.3 MAT-file, which is HDF5 inside and not supported; resave it as v7 in MATLAB: S = load(f); save(f, '-struct', 'S', '-v7')",
        },
        Case {
            // An HDF5 file renamed to .mat, without MATLAB's text block.
            name: "plain HDF5 file named .mat",
            setup: |dir| {
                let mut bytes = b"\x89HDF\r\n\x1a\n".to_vec();
                bytes.resize(1024, 0);
                fs::write(dir.join("s1.mat"), bytes).unwrap();
                edit(dir, "dataset.toml", "*.txt", "*.mat");
                None
            },
            expected: "<dir>/s1.mat: a MATLAB v7.3 MAT-file, which is HDF5 inside and not supported; resave it as v7 in MATLAB: S = load(f); save(f, '-struct', 'S', '-v7')",
        },
        Case {
            name: "labels table without the named column",
            setup: |dir| {
                edit(dir, "dataset.toml", "label_column = \"dx\"", "label_column = \"DX_GROUP\"");
                None
            },
            expected: "<dir>/labels.csv: no column named \"DX_GROUP\" (label_column); the table has: id, dx, subject, site",
        },
        Case {
            name: "label value that maps to no class",
            setup: |dir| {
                edit(dir, "labels.csv", "s3,0", "s3,3");
                None
            },
            expected: "<dir>/labels.csv: line 4: dx = \"3\" maps to no class; expected one of \"0\" (control), \"1\" (patient) (or a missing-value marker)",
        },
        Case {
            name: "only one class present",
            setup: |dir| {
                edit(dir, "labels.csv", "s2,1", "s2,-9999");
                edit(dir, "labels.csv", "s4,1", "s4,");
                None
            },
            expected: "only one class present (control: 2 scans); a classification dataset needs at least two",
        },
        Case {
            name: "scans without labels and labels without scans leave nothing",
            setup: |dir| {
                fs::write(dir.join("labels.csv"), "id,dx,subject,site\nx1,0,p1,A\nx2,1,p2,A\nx3,1,p3,A\n").unwrap();
                None
            },
            expected: "no usable scan: 4 files found, 4 without a label, 0 too short, 3 labels without a scan; check id_column and id_from_file_name",
        },
        Case {
            name: "duplicate scan ids from the file-name regex",
            setup: |dir| {
                fs::write(dir.join("s1_run2.txt"), table(9)).unwrap();
                edit(dir, "dataset.toml", "label_column", "id_from_file_name = '^(s\\d)'\nlabel_column");
                None
            },
            expected: "duplicate scan id \"s1\": <dir>/s1.txt and <dir>/s1_run2.txt",
        },
        Case {
            name: "duplicate scan id in the labels table",
            setup: |dir| {
                edit(dir, "labels.csv", "s4,1,p4,B\n", "s4,1,p4,B\ns2,0,p9,B\n");
                None
            },
            expected: "<dir>/labels.csv: scan id \"s2\" appears twice (lines 3 and 6)",
        },
        Case {
            // Spreadsheet exports end lines with CRLF; line numbers are still
            // the editor's (1-based, the header is line 1).
            name: "duplicate scan id in a CRLF labels table",
            setup: |dir| {
                let mut table = BASE_LABELS.to_string();
                for i in 5..=8 {
                    table.push_str(&format!("x{i},0,p{i},B\n"));
                }
                table.push_str("s1,0,p1,A\n");
                fs::write(dir.join("labels.csv"), table.replace('\n', "\r\n")).unwrap();
                None
            },
            expected: "<dir>/labels.csv: scan id \"s1\" appears twice (lines 2 and 10)",
        },
        Case {
            name: "label value that maps to no class, CRLF labels table",
            setup: |dir| {
                let table = BASE_LABELS.replace("s1,0", "s1,7").replace('\n', "\r\n");
                fs::write(dir.join("labels.csv"), table).unwrap();
                None
            },
            expected: "<dir>/labels.csv: line 2: dx = \"7\" maps to no class; expected one of \"0\" (control), \"1\" (patient) (or a missing-value marker)",
        },
        Case {
            name: "label value that maps to no class, TSV with old Mac line ends",
            setup: |dir| {
                let table = BASE_LABELS.replace("s2,1", "s2,7").replace(',', "\t").replace('\n', "\r");
                fs::write(dir.join("labels.csv"), table).unwrap();
                None
            },
            expected: "<dir>/labels.csv: line 3: dx = \"7\" maps to no class; expected one of \"0\" (control), \"1\" (patient) (or a missing-value marker)",
        },
        Case {
            name: "file name the id regex does not match",
            setup: |dir| {
                edit(dir, "dataset.toml", "label_column", "id_from_file_name = '^(s[123])\\.txt$'\nlabel_column");
                None
            },
            expected: "<dir>/s4.txt: file name does not match id_from_file_name \"^(s[123])\\.txt$\" (or the regex has no capture group)",
        },
        Case {
            name: "subject with two labels",
            setup: |dir| {
                edit(dir, "labels.csv", "s2,1,p2", "s2,1,p1");
                None
            },
            expected: "subject \"p1\" has scans with different labels (control and patient); splits are by subject, so each subject needs one label",
        },
    ];
    #[cfg(target_os = "linux")]
    cases.extend(link_cases());
    cases
}

/// Symbolic links in place of scan files (Linux: the loop's OS message and number).
#[cfg(target_os = "linux")]
fn link_cases() -> Vec<Case> {
    vec![
        Case {
            // A DataLad / git-annex tree whose content was never fetched.
            name: "dangling symbolic link in place of a scan",
            setup: |dir| {
                fs::remove_file(dir.join("s2.txt")).unwrap();
                std::os::unix::fs::symlink(".git/annex/objects/XX/s2.txt", dir.join("s2.txt")).unwrap();
                None
            },
            expected: "<dir>/s2.txt: is a symbolic link to .git/annex/objects/XX/s2.txt, which does not exist; in a DataLad or git-annex dataset, fetch the file first (`datalad get <dir>/s2.txt` or `git annex get <dir>/s2.txt`)",
        },
        Case {
            name: "symbolic link loop in place of a scan",
            setup: |dir| {
                fs::remove_file(dir.join("s3.txt")).unwrap();
                std::os::unix::fs::symlink("s3.txt", dir.join("s3.txt")).unwrap();
                None
            },
            expected: "<dir>/s3.txt: is a symbolic link to s3.txt that cannot be followed (Too many levels of symbolic links (os error 40)); a link loop? Point it at the real file",
        },
    ]
}

#[test]
fn data_bad_input_gives_exact_messages() {
    let mut failures = Vec::new();
    for case in cases() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        good(dir);
        let data_override = (case.setup)(dir);
        let outcome =
            Dataset::from_config_file(&dir.join("dataset.toml"), data_override.as_deref());
        match outcome {
            Ok(dataset) => failures.push(format!(
                "{}: loaded {} scans instead of failing",
                case.name,
                dataset.scans.len()
            )),
            Err(error) => {
                let message = error
                    .to_string()
                    .replace(&dir.display().to_string(), "<dir>");
                if message != case.expected {
                    failures.push(format!(
                        "{}:\n  got      {message}\n  expected {}",
                        case.name, case.expected
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn data_good_dataset_of_the_table_loads() {
    let root = tempfile::tempdir().unwrap();
    good(root.path());
    let dataset = Dataset::from_config_file(&root.path().join("dataset.toml"), None).unwrap();
    assert_eq!(dataset.scans.len(), 4);
}

/// The CLI prints errors with their whole cause chain (`{:#}` in src/main.rs).
/// An OS error must appear once, not once in the message and again as its source.
#[test]
fn data_errors_do_not_repeat_their_cause() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    good(dir);
    // A labels "table" that is a folder: the read fails with an OS error.
    fs::remove_file(dir.join("labels.csv")).unwrap();
    fs::create_dir(dir.join("labels.csv")).unwrap();
    let error = Dataset::from_config_file(&dir.join("dataset.toml"), None).unwrap_err();
    let shown = error
        .to_string()
        .replace(&dir.display().to_string(), "<dir>");
    assert_eq!(
        shown,
        "<dir>/labels.csv: cannot read: Is a directory (os error 21)"
    );
    let chain =
        format!("{:#}", anyhow::Error::new(error)).replace(&dir.display().to_string(), "<dir>");
    assert_eq!(chain, shown);

    // A write that fails: the synthetic dataset's parent is a file.
    fs::write(dir.join("plain"), "x").unwrap();
    let error = stptf::data::synth::write_dataset(
        &dir.join("plain").join("synthetic"),
        &stptf::data::synth::SynthConfig::default(),
    )
    .unwrap_err();
    let chain =
        format!("{:#}", anyhow::Error::new(error)).replace(&dir.display().to_string(), "<dir>");
    assert_eq!(
        chain,
        "<dir>/plain: cannot write: File exists (os error 17)"
    );
}
