//! Every way the data layer can refuse its input, with the message the user sees.
//!
//! Each message names the file (and, for text, the line and column, both 1-based),
//! what was found and what was expected, so a user can fix the input without
//! reading this code. `docs/data.md` lists them all; `tests/data_bad_input.rs`
//! pins the exact wording.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {what} does not exist")]
    NotFound { path: String, what: &'static str },

    // The OS error is part of the message and deliberately not a `#[source]`:
    // the CLI prints the whole chain (`{:#}`), which would say it twice.
    #[error("{path}: cannot read: {cause}")]
    Io { path: String, cause: std::io::Error },

    #[error("{path}: cannot write: {cause}")]
    Write { path: String, cause: std::io::Error },

    #[error("{path}: invalid dataset description: {message}")]
    Config { path: String, message: String },

    #[error("{path}: line {line}: invalid dataset description: {message}")]
    ConfigAt {
        path: String,
        line: usize,
        message: String,
    },

    #[error("{path}: is a symbolic link to {target}, which does not exist; in a DataLad or git-annex dataset, fetch the file first (`datalad get {path}` or `git annex get {path}`)")]
    DanglingLink { path: String, target: String },

    #[error("{path}: is a symbolic link to {target} that cannot be followed ({cause}); a link loop? Point it at the real file")]
    UnfollowableLink {
        path: String,
        target: String,
        cause: String,
    },

    #[error("{dir}: no file matches \"{pattern}\"")]
    NoFilesMatched { dir: String, pattern: String },

    #[error("{path}: scan file is empty ({what}); expected a table of numbers ({layout})")]
    EmptyScanFile {
        path: String,
        /// "0 bytes" or "only blank lines".
        what: &'static str,
        /// What rows and columns mean under the configured orientation.
        layout: &'static str,
    },

    #[error(
        "{path}: the array has shape {shape:?}; expected at least one time point and one region"
    )]
    EmptyArray { path: String, shape: Vec<usize> },

    #[error("{path}: labels table is empty; expected a CSV or TSV table whose header row names the id column \"{id_column}\" and the label column \"{label_column}\"")]
    EmptyLabelsTable {
        path: String,
        id_column: String,
        label_column: String,
    },

    #[error("{path}: labels table has a header but no data rows; expected one row per scan")]
    LabelsWithoutRows { path: String },

    #[error("{path}: line {line}: invalid region table: {message}")]
    RegionTable {
        path: String,
        line: usize,
        message: String,
    },

    #[error("the test dataset's {what} is {test}, the training dataset's {train}; a model trained on one cannot score the other")]
    TransferMismatch {
        what: &'static str,
        train: String,
        test: String,
    },

    #[error("{path}: {message}")]
    BadNpy { path: String, message: String },

    #[error("{path}: truncated .npy: the header promises {expected} bytes of data but the file holds {found}")]
    TruncatedNpy {
        path: String,
        expected: u64,
        found: u64,
    },

    #[error("{path}: unsupported data type {found}; expected {expected}")]
    UnsupportedDtype {
        path: String,
        found: String,
        expected: &'static str,
    },

    #[error(
        "{path}: expected a 2-D array [time, regions] or [regions, time], found shape {found:?}"
    )]
    NotTwoDimensional { path: String, found: Vec<usize> },

    #[error("{path}: no array named \"{name}\"; the file holds: {available}")]
    ArrayNotFound {
        path: String,
        name: String,
        available: String,
    },

    #[error("{path}: holds several arrays ({available}); name one with `array_name`")]
    AmbiguousArray { path: String, available: String },

    #[error("{path}: cannot read MATLAB file: {message}")]
    BadMat { path: String, message: String },

    #[error("{path}: a MATLAB v7.3 MAT-file, which is HDF5 inside and not supported; resave it as v7 in MATLAB: S = load(f); save(f, '-struct', 'S', '-v7')")]
    MatV73 { path: String },

    #[error("{path}: line {line}, column {column}: expected a number, found \"{found}\"")]
    NotANumber {
        path: String,
        line: usize,
        column: usize,
        found: String,
    },

    #[error("{path}: line {line}, column {column}: found {found}; expected a finite number")]
    NonFiniteText {
        path: String,
        line: usize,
        column: usize,
        found: String,
    },

    #[error("{path}: element [{row}, {column}] (0-based, as stored) is {found}; expected a finite number")]
    NonFiniteArray {
        path: String,
        row: usize,
        column: usize,
        found: String,
    },

    #[error("{path}: line {line} has {found} columns; expected {expected} like the first data row (line {first_line})")]
    RaggedRow {
        path: String,
        line: usize,
        found: usize,
        expected: usize,
        first_line: usize,
    },

    #[error("{path}: has a header but no data rows; expected at least one row of numbers")]
    NoDataRows { path: String },

    #[error("{path}: skip_columns names \"{column}\" but the header has no such column (header: {available})")]
    SkipColumnNotFound {
        path: String,
        column: String,
        available: String,
    },

    #[error("{path}: skip_columns names columns, but the file has no header row to find them in")]
    SkipColumnsWithoutHeader { path: String },

    #[error("{path}: {found} regions, but {agreeing} of the {total} files have {expected} (e.g. {reference})")]
    RegionCountMismatch {
        path: String,
        found: usize,
        /// The count most files have.
        expected: usize,
        agreeing: usize,
        total: usize,
        reference: String,
    },

    #[error("{path}: no column named \"{column}\" ({role}); the table has: {available}")]
    MissingColumn {
        path: String,
        column: String,
        role: &'static str,
        available: String,
    },

    #[error("{path}: line {line}: {column} = \"{value}\" maps to no class; expected one of {expected} (or a missing-value marker)")]
    UnknownLabel {
        path: String,
        line: usize,
        column: String,
        value: String,
        expected: String,
    },

    #[error("{path}: scan id \"{id}\" appears twice (lines {first_line} and {second_line})")]
    DuplicateLabelId {
        path: String,
        id: String,
        first_line: usize,
        second_line: usize,
    },

    #[error("duplicate scan id \"{id}\": {first} and {second}")]
    DuplicateScanId {
        id: String,
        first: String,
        second: String,
    },

    #[error("{path}: file name does not match id_from_file_name \"{regex}\" (or the regex has no capture group)")]
    IdRegexNoMatch { path: String, regex: String },

    #[error("no usable scan: {files} files found, {without_label} without a label, {short} too short, {labels_without_scan} labels without a scan; check id_column and id_from_file_name")]
    NothingLeft {
        files: usize,
        without_label: usize,
        short: usize,
        labels_without_scan: usize,
    },

    #[error("only one class present ({present}); a classification dataset needs at least two")]
    OneClass { present: String },

    #[error("subject \"{subject}\" has scans with different labels ({first} and {second}); splits are by subject, so each subject needs one label")]
    SubjectWithTwoLabels {
        subject: String,
        first: String,
        second: String,
    },

    #[error("cannot make {k} folds: class {class} has only {subjects} subjects (k must be between 2 and the smallest class's subject count)")]
    TooManyFolds {
        k: usize,
        class: String,
        subjects: usize,
    },

    #[error("fold {fold} would be one-class: its {side} set has only class {class}")]
    OneClassFold {
        fold: String,
        side: &'static str,
        class: String,
    },

    #[error("label fraction {fraction} is outside (0, 1]")]
    BadFraction { fraction: f64 },

    #[error("{path}: already exists; refusing to overwrite it")]
    OutputExists { path: String },

    #[error("invalid synthetic-data setting: {message}")]
    BadSynthConfig { message: String },
}

/// How a path appears in messages: as given (relative paths stay relative).
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// A failed read; a missing file is `NotFound`.
    pub(crate) fn io(path: &Path, cause: std::io::Error) -> Self {
        let path = shown(path);
        if cause.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path, what: "file" }
        } else {
            DataError::Io { path, cause }
        }
    }

    /// A failed write or folder operation.
    pub(crate) fn write(path: &Path, cause: std::io::Error) -> Self {
        DataError::Write {
            path: shown(path),
            cause,
        }
    }
}
