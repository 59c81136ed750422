//! Classification metrics as the paper reports them: accuracy, ROC AUC and
//! recall per fold, then mean (std) over folds, in percent.
//!
//! - AUC, binary: the Mann–Whitney statistic, P(score of a positive > score
//!   of a negative) with ties counted 1/2 (what scikit-learn's
//!   `roc_auc_score` computes); multi-class: the unweighted mean of the
//!   one-vs-rest AUCs (`multi_class="ovr", average="macro"`).
//! - Recall, binary: of the positive class, class index 1; multi-class: macro
//!   over the classes present in the labels or the predictions (a class only
//!   ever predicted counts as recall 0, like scikit-learn).
//! - Predictions are the argmax of the class scores, the first maximum on ties.
//!
//! A fold whose AUC or recall is undefined (one class only) is an error that
//! says so, never a NaN in a table.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum MetricsError {
    #[error("no scans to score")]
    Empty,

    #[error("{scores} score rows for {labels} labels")]
    LengthMismatch { scores: usize, labels: usize },

    #[error("scores hold {len} values, not a multiple of {classes} classes")]
    Ragged { len: usize, classes: usize },

    #[error("label {label} is outside the {classes} classes")]
    LabelOutOfRange { label: u32, classes: usize },

    #[error("a score is {value} (scan {scan}); scores must be finite")]
    NotFinite { scan: usize, value: f64 },

    #[error("ROC AUC is undefined: {what}; it needs at least one positive and one negative scan")]
    OneClass { what: String },

    #[error("recall of class 1 is undefined: no scan of class 1 among the {scans} scored")]
    NoPositives { scans: usize },

    #[error("need at least 2 classes, got {classes}")]
    TooFewClasses { classes: usize },

    #[error("no folds to summarize")]
    NoFolds,
}

pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Class scores (probabilities or logits) of n scans, row-major [n, classes].
#[derive(Debug, Clone, Copy)]
pub struct Scores<'a> {
    pub values: &'a [f64],
    pub classes: usize,
}

impl<'a> Scores<'a> {
    pub fn new(values: &'a [f64], classes: usize) -> Result<Self> {
        if classes < 2 {
            return Err(MetricsError::TooFewClasses { classes });
        }
        if values.len() % classes != 0 {
            return Err(MetricsError::Ragged {
                len: values.len(),
                classes,
            });
        }
        if let Some((i, &v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(MetricsError::NotFinite {
                scan: i / classes,
                value: v,
            });
        }
        Ok(Scores { values, classes })
    }

    pub fn len(&self) -> usize {
        self.values.len() / self.classes
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn row(&self, i: usize) -> &'a [f64] {
        &self.values[i * self.classes..(i + 1) * self.classes]
    }

    /// One class's column: the one-vs-rest score.
    pub fn column(&self, class: usize) -> Vec<f64> {
        (0..self.len()).map(|i| self.row(i)[class]).collect()
    }

    /// Argmax per row, the first maximum on ties.
    pub fn predictions(&self) -> Vec<u32> {
        (0..self.len())
            .map(|i| {
                let row = self.row(i);
                let mut best = 0;
                for (c, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = c;
                    }
                }
                best as u32
            })
            .collect()
    }
}

fn check_labels(n: usize, labels: &[u32], classes: usize) -> Result<()> {
    if n != labels.len() {
        return Err(MetricsError::LengthMismatch {
            scores: n,
            labels: labels.len(),
        });
    }
    if n == 0 {
        return Err(MetricsError::Empty);
    }
    if let Some(&label) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(MetricsError::LabelOutOfRange { label, classes });
    }
    Ok(())
}

/// Fraction of predictions equal to the label.
pub fn accuracy(predictions: &[u32], labels: &[u32]) -> Result<f64> {
    if predictions.len() != labels.len() {
        return Err(MetricsError::LengthMismatch {
            scores: predictions.len(),
            labels: labels.len(),
        });
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty);
    }
    let right = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(right as f64 / labels.len() as f64)
}

/// Binary recall of class 1, or macro recall for more classes (see the module doc).
pub fn recall(predictions: &[u32], labels: &[u32], classes: usize) -> Result<f64> {
    check_labels(predictions.len(), labels, classes)?;
    let mut positives = vec![0usize; classes];
    let mut hits = vec![0usize; classes];
    let mut predicted = vec![false; classes];
    for (&p, &l) in predictions.iter().zip(labels) {
        positives[l as usize] += 1;
        if p == l {
            hits[l as usize] += 1;
        }
        if let Some(seen) = predicted.get_mut(p as usize) {
            *seen = true;
        }
    }
    if classes == 2 {
        if positives[1] == 0 {
            return Err(MetricsError::NoPositives {
                scans: labels.len(),
            });
        }
        return Ok(hits[1] as f64 / positives[1] as f64);
    }
    let mut sum = 0.0;
    let mut count = 0;
    for c in 0..classes {
        if positives[c] > 0 {
            sum += hits[c] as f64 / positives[c] as f64;
            count += 1;
        } else if predicted[c] {
            count += 1;
        }
    }
    Ok(sum / count as f64)
}

/// Mann–Whitney AUC of `scores` for `positive` vs the rest, ties counted 1/2:
/// (sum of the positives' midranks − n₊(n₊+1)/2) / (n₊ n₋).
pub fn binary_auc(scores: &[f64], positive: &[bool]) -> Result<f64> {
    if scores.len() != positive.len() {
        return Err(MetricsError::LengthMismatch {
            scores: scores.len(),
            labels: positive.len(),
        });
    }
    if let Some((scan, &value)) = scores.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(MetricsError::NotFinite { scan, value });
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(MetricsError::OneClass {
            what: format!(
                "all {} scans are {}",
                positive.len(),
                if n_pos == 0 { "negative" } else { "positive" }
            ),
        });
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let midrank = (i + j + 2) as f64 / 2.0;
        let tied_pos = order[i..=j].iter().filter(|&&k| positive[k]).count();
        rank_sum += midrank * tied_pos as f64;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Ok((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// ROC AUC of class scores: binary on class 1's column, else macro one-vs-rest.
pub fn roc_auc(scores: Scores<'_>, labels: &[u32]) -> Result<f64> {
    check_labels(scores.len(), labels, scores.classes)?;
    if scores.classes == 2 {
        let positive: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
        return binary_auc(&scores.column(1), &positive).map_err(|e| match e {
            MetricsError::OneClass { .. } => MetricsError::OneClass {
                what: format!(
                    "every one of the {} scans is of class {}",
                    labels.len(),
                    labels[0]
                ),
            },
            other => other,
        });
    }
    let mut sum = 0.0;
    for class in 0..scores.classes {
        let positive: Vec<bool> = labels.iter().map(|&l| l as usize == class).collect();
        sum += binary_auc(&scores.column(class), &positive).map_err(|e| match e {
            MetricsError::OneClass { .. } => MetricsError::OneClass {
                what: format!(
                    "class {class} is {} among the {} scans (one-vs-rest)",
                    if positive.iter().any(|&p| p) {
                        "every scan"
                    } else {
                        "absent"
                    },
                    labels.len()
                ),
            },
            other => other,
        })?;
    }
    Ok(sum / scores.classes as f64)
}

/// ROC curve points (false-positive rate, true-positive rate), from (0, 0) to
/// (1, 1), one point per distinct score threshold, highest threshold first
/// (scikit-learn's `roc_curve(..., drop_intermediate=False)`).
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Result<Vec<(f64, f64)>> {
    // binary_auc checks lengths, finiteness and that both classes are present.
    binary_auc(scores, positive)?;
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let threshold = scores[order[i]];
        while i < order.len() && scores[order[i]] == threshold {
            if positive[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        points.push((fp as f64 / n_neg, tp as f64 / n_pos));
    }
    Ok(points)
}

/// One fold's metrics, as fractions in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FoldMetrics {
    pub accuracy: f64,
    pub auc: f64,
    pub recall: f64,
}

impl FoldMetrics {
    pub fn compute(scores: Scores<'_>, labels: &[u32]) -> Result<Self> {
        check_labels(scores.len(), labels, scores.classes)?;
        let predictions = scores.predictions();
        Ok(FoldMetrics {
            accuracy: accuracy(&predictions, labels)?,
            auc: roc_auc(scores, labels)?,
            recall: recall(&predictions, labels, scores.classes)?,
        })
    }
}

/// Mean and sample standard deviation (n − 1) of one metric over folds, in
/// percent, with the per-fold values. One fold has std 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub folds: Vec<f64>,
}

impl Stat {
    pub fn of_percent(fractions: &[f64]) -> Result<Self> {
        if fractions.is_empty() {
            return Err(MetricsError::NoFolds);
        }
        let folds: Vec<f64> = fractions.iter().map(|f| 100.0 * f).collect();
        let (mean, std) = mean_std(&folds);
        Ok(Stat { mean, std, folds })
    }

    /// The paper's `mean(std)`, two decimals.
    pub fn paper(&self) -> String {
        format!("{:.2}({:.2})", self.mean, self.std)
    }
}

/// Mean and sample standard deviation (n − 1; 0 for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// What `summary.json` holds: each metric's mean, std and folds, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub accuracy: Stat,
    pub auc: Stat,
    pub recall: Stat,
}

impl Summary {
    pub fn from_folds(folds: &[FoldMetrics]) -> Result<Self> {
        let pick = |f: fn(&FoldMetrics) -> f64| folds.iter().map(f).collect::<Vec<_>>();
        Ok(Summary {
            accuracy: Stat::of_percent(&pick(|m| m.accuracy))?,
            auc: Stat::of_percent(&pick(|m| m.auc))?,
            recall: Stat::of_percent(&pick(|m| m.recall))?,
        })
    }
}

/// The paper's table: one row per method, `mean(std)` in percent.
pub fn format_table(rows: &[(&str, &Summary)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0)
        .max("Method".len());
    let mut out = format!(
        "{:<width$}  {:>13}  {:>13}  {:>13}\n",
        "Method", "Accuracy", "AUC", "Recall"
    );
    for (name, s) in rows {
        out.push_str(&format!(
            "{:<width$}  {:>13}  {:>13}  {:>13}\n",
            name,
            s.accuracy.paper(),
            s.auc.paper(),
            s.recall.paper()
        ));
    }
    out
}

/// What one split (training or validation scans) looks like to the model at
/// the end of a fine-tuning epoch (issue 9 item 1): whether it fits, and
/// whether the embedding and the logits vary across subjects at all (at
/// initialization Z_st varied by ~3 % of its norm and the logits by ~1e-3,
/// which is why the literal head could not learn).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitDiagnostics {
    pub scans: usize,
    /// Mean cross-entropy of the K-crop-averaged logits.
    pub loss: f64,
    /// Fraction of argmax predictions equal to the label.
    pub accuracy: f64,
    /// sqrt(Σ_d var_d(Z_st)) over scans, divided by the mean ‖Z_st‖: how much
    /// the embedding differs between subjects relative to its size.
    pub embedding_spread: f64,
    /// The standard deviation across scans of each class's logit, averaged
    /// over the classes.
    pub logit_spread: f64,
    /// Classes predicted for at least one scan.
    pub predicted_classes: usize,
}

impl SplitDiagnostics {
    /// From per-scan K-crop-averaged logits [scans][classes], embeddings
    /// [scans][D] and labels.
    pub fn compute(logits: &[Vec<f64>], embeddings: &[Vec<f64>], labels: &[u32]) -> Result<Self> {
        let n = logits.len();
        if n == 0 {
            return Err(MetricsError::Empty);
        }
        if labels.len() != n || embeddings.len() != n {
            return Err(MetricsError::LengthMismatch {
                scores: n,
                labels: labels.len(),
            });
        }
        let classes = logits[0].len();
        check_labels(n, labels, classes)?;
        let mut loss = 0.0;
        let mut correct = 0usize;
        let mut predicted = vec![false; classes];
        for (row, &label) in logits.iter().zip(labels) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let log_z = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            loss += log_z - row[label as usize];
            let best = first_argmax(row);
            predicted[best] = true;
            correct += usize::from(best == label as usize);
        }
        let column_std = |rows: &[Vec<f64>], j: usize| {
            let column: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            population_var(&column).sqrt()
        };
        let logit_spread =
            (0..classes).map(|k| column_std(logits, k)).sum::<f64>() / classes as f64;
        let dim = embeddings[0].len();
        let spread = (0..dim)
            .map(|j| column_std(embeddings, j).powi(2))
            .sum::<f64>()
            .sqrt();
        let mean_norm = embeddings
            .iter()
            .map(|z| z.iter().map(|v| v * v).sum::<f64>().sqrt())
            .sum::<f64>()
            / n as f64;
        Ok(Self {
            scans: n,
            loss: loss / n as f64,
            accuracy: correct as f64 / n as f64,
            embedding_spread: if mean_norm > 0.0 {
                spread / mean_norm
            } else {
                0.0
            },
            logit_spread,
            predicted_classes: predicted.iter().filter(|&&p| p).count(),
        })
    }
}

/// One fine-tuning epoch's diagnostics: the training and (when
/// `finetune.validation_fraction > 0`) validation splits, and the L2 norm of
/// the gradient per parameter group (the name before the first `.`) at the
/// epoch's last step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochDiagnostics {
    pub train: SplitDiagnostics,
    pub validation: Option<SplitDiagnostics>,
    pub grad_norms: Vec<(String, f64)>,
}

/// The class every test scan is predicted as, when the predictions hold a
/// single class (a fold that only reports its majority rate): the name
/// from `class_names`.
pub fn single_predicted_class(predictions: &[u32], class_names: &[String]) -> Option<String> {
    let first = *predictions.first()?;
    predictions.iter().all(|&p| p == first).then(|| {
        class_names
            .get(first as usize)
            .cloned()
            .unwrap_or_else(|| format!("class {first}"))
    })
}

fn first_argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (c, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = c;
        }
    }
    best
}

fn population_var(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scikit-learn computes the same rational numbers in f64 by a different
    /// summation order: agreement to 1e-12 is exact up to rounding.
    const SKLEARN: f64 = 1e-12;

    #[derive(Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        classes: usize,
        labels: Vec<u32>,
        probabilities: Vec<Vec<f64>>,
        accuracy: f64,
        auc: f64,
        recall: f64,
        roc_fpr: Option<Vec<f64>>,
        roc_tpr: Option<Vec<f64>>,
    }

    #[test]
    fn matches_scikit_learn() {
        let fixture: Fixture =
            serde_json::from_str(include_str!("../../tests/fixtures/metrics_sklearn.json"))
                .unwrap();
        assert!(fixture.cases.len() >= 7);
        for case in &fixture.cases {
            let flat: Vec<f64> = case.probabilities.concat();
            let scores = Scores::new(&flat, case.classes).unwrap();
            let predictions = scores.predictions();
            let name = &case.name;
            let acc = accuracy(&predictions, &case.labels).unwrap();
            assert!(
                (acc - case.accuracy).abs() < SKLEARN,
                "{name}: accuracy {acc}"
            );
            let auc = roc_auc(scores, &case.labels).unwrap();
            assert!(
                (auc - case.auc).abs() < SKLEARN,
                "{name}: auc {auc} vs {}",
                case.auc
            );
            let rec = recall(&predictions, &case.labels, case.classes).unwrap();
            assert!((rec - case.recall).abs() < SKLEARN, "{name}: recall {rec}");
            if let (Some(fpr), Some(tpr)) = (&case.roc_fpr, &case.roc_tpr) {
                let positive: Vec<bool> = case.labels.iter().map(|&l| l == 1).collect();
                let curve = roc_curve(&scores.column(1), &positive).unwrap();
                assert_eq!(curve.len(), fpr.len(), "{name}: ROC points");
                for ((x, y), (ex, ey)) in curve.iter().zip(fpr.iter().zip(tpr)) {
                    assert!(
                        (x - ex).abs() < SKLEARN && (y - ey).abs() < SKLEARN,
                        "{name}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_class_fold_is_an_error_not_nan() {
        let probs = [0.2, 0.8, 0.6, 0.4, 0.3, 0.7];
        let scores = Scores::new(&probs, 2).unwrap();
        let e = roc_auc(scores, &[1, 1, 1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ROC AUC is undefined: every one of the 3 scans is of class 1; it needs at least one positive and one negative scan"
        );
        assert!(matches!(
            FoldMetrics::compute(scores, &[0, 0, 0]),
            Err(MetricsError::OneClass { .. })
        ));
        let three = [0.2, 0.5, 0.3, 0.6, 0.2, 0.2];
        let e = roc_auc(Scores::new(&three, 3).unwrap(), &[0, 1]).unwrap_err();
        assert!(e.to_string().contains("class 2 is absent"), "{e}");
        let e = recall(&[0, 0], &[0, 0], 2).unwrap_err();
        assert!(e.to_string().contains("no scan of class 1"), "{e}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            Scores::new(&[0.1, f64::NAN], 2),
            Err(MetricsError::NotFinite { scan: 0, .. })
        ));
        assert!(matches!(
            Scores::new(&[0.1, 0.2, 0.3], 2),
            Err(MetricsError::Ragged { .. })
        ));
        let s = Scores::new(&[0.1, 0.9], 2).unwrap();
        assert!(matches!(
            roc_auc(s, &[0, 1]),
            Err(MetricsError::LengthMismatch { .. })
        ));
        assert!(matches!(
            roc_auc(s, &[2]),
            Err(MetricsError::LabelOutOfRange { .. })
        ));
        assert!(matches!(accuracy(&[], &[]), Err(MetricsError::Empty)));
        assert!(matches!(
            Summary::from_folds(&[]),
            Err(MetricsError::NoFolds)
        ));
    }

    #[test]
    fn summary_is_percent_with_sample_std() {
        let folds = [
            FoldMetrics {
                accuracy: 0.6,
                auc: 0.7,
                recall: 0.5,
            },
            FoldMetrics {
                accuracy: 0.8,
                auc: 0.7,
                recall: 0.7,
            },
        ];
        let s = Summary::from_folds(&folds).unwrap();
        assert!((s.accuracy.mean - 70.0).abs() < 1e-9);
        // Sample std of 60 and 80: sqrt(200) = 14.142...
        assert!((s.accuracy.std - 200f64.sqrt()).abs() < 1e-9);
        assert_eq!(s.auc.std, 0.0);
        assert_eq!(s.accuracy.paper(), "70.00(14.14)");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["accuracy"]["folds"].as_array().unwrap().len(), 2);
        assert!(json["recall"]["mean"].is_f64() && json["auc"]["std"].is_f64());
        let table = format_table(&[("FC + LR", &s)]);
        assert!(
            table.contains("FC + LR") && table.contains("70.00(14.14)"),
            "{table}"
        );
        assert_eq!(mean_std(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn split_diagnostics_are_the_hand_computed_values() {
        // Two scans, two classes: logits (0, ln 3) and (0, 0).
        let logits = vec![vec![0.0, 3f64.ln()], vec![0.0, 0.0]];
        let z = vec![vec![3.0, 4.0], vec![3.0, -4.0]];
        let d = SplitDiagnostics::compute(&logits, &z, &[1, 0]).unwrap();
        let expected_loss = ((4f64 / 3.0).ln() + 2f64.ln()) / 2.0;
        assert!((d.loss - expected_loss).abs() < 1e-12, "{}", d.loss);
        assert_eq!(d.accuracy, 1.0, "ties go to the first class");
        // std over scans: dim 0 = 0, dim 1 = 4; mean norm 5.
        assert!((d.embedding_spread - 0.8).abs() < 1e-12);
        assert!((d.logit_spread - 3f64.ln() / 4.0).abs() < 1e-12);
        assert_eq!(d.predicted_classes, 2);
    }

    #[test]
    fn a_single_predicted_class_is_named() {
        let names = vec!["control".to_string(), "autism".to_string()];
        assert_eq!(
            single_predicted_class(&[1, 1, 1], &names).as_deref(),
            Some("autism")
        );
        assert_eq!(single_predicted_class(&[1, 0, 1], &names), None);
        assert_eq!(single_predicted_class(&[], &names), None);
    }
}
