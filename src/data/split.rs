//! Train/test splits at subject level: stratified k-fold, leave-site-out, and
//! label-fraction subsampling of a training fold.
//!
//! All functions take per-scan slices (labels, subjects, sites) and return scan
//! indices, so they work for a loaded `Dataset` (`dataset.labels()`,
//! `dataset.subjects()`, `dataset.sites()`) as well as for plain test vectors.
//! Randomness is a ChaCha8 stream seeded from `seed`: same inputs and seed, same folds.

use std::collections::{BTreeMap, HashMap};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::error::{DataError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    /// "1".."k" for k-fold, the site name for leave-site-out.
    pub name: String,
    /// Scan indices, ascending.
    pub train: Vec<usize>,
    /// Scan indices, ascending.
    pub test: Vec<usize>,
}

/// A subject: its label and its scans, in order of first appearance.
struct Subject {
    label: u32,
    scans: Vec<usize>,
}

fn group_by_subject(labels: &[u32], subjects: &[String], within: &[usize]) -> Result<Vec<Subject>> {
    let mut order: Vec<Subject> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for &scan in within {
        let (Some(&label), Some(subject)) = (labels.get(scan), subjects.get(scan)) else {
            continue;
        };
        match position.get(subject.as_str()) {
            Some(&p) => {
                let Some(group) = order.get_mut(p) else {
                    continue;
                };
                if group.label != label {
                    return Err(DataError::SubjectWithTwoLabels {
                        subject: subject.clone(),
                        first: group.label.to_string(),
                        second: label.to_string(),
                    });
                }
                group.scans.push(scan);
            }
            None => {
                position.insert(subject, order.len());
                order.push(Subject {
                    label,
                    scans: vec![scan],
                });
            }
        }
    }
    Ok(order)
}

/// Subjects of each class (by class label, ascending), each list in first-appearance order.
fn subjects_by_class(subjects: &[Subject]) -> BTreeMap<u32, Vec<usize>> {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (index, subject) in subjects.iter().enumerate() {
        by_class.entry(subject.label).or_default().push(index);
    }
    by_class
}

/// Stratified k-fold over subjects: each subject's scans land in exactly one
/// test fold; each fold gets floor or ceil of (class's subjects / k) subjects of
/// every class. Errors when k < 2 or k exceeds a class's subject count.
pub fn stratified_subject_kfold(
    labels: &[u32],
    subjects: &[String],
    k: usize,
    seed: u64,
) -> Result<Vec<Fold>> {
    let all: Vec<usize> = (0..labels.len().min(subjects.len())).collect();
    let groups = group_by_subject(labels, subjects, &all)?;
    let by_class = subjects_by_class(&groups);
    if by_class.len() < 2 {
        return Err(DataError::OneClass {
            present: by_class
                .keys()
                .map(|c| format!("class {c}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    for (class, members) in &by_class {
        if k < 2 || k > members.len() {
            return Err(DataError::TooManyFolds {
                k,
                class: class.to_string(),
                subjects: members.len(),
            });
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of_subject = vec![0usize; groups.len()];
    // Deal each class's shuffled subjects round-robin, continuing where the
    // previous class stopped so that fold totals stay balanced too.
    let mut next_fold = 0;
    for members in by_class.values() {
        let mut shuffled = members.clone();
        shuffled.shuffle(&mut rng);
        for subject in shuffled {
            if let Some(slot) = fold_of_subject.get_mut(subject) {
                *slot = next_fold;
            }
            next_fold = (next_fold + 1) % k;
        }
    }
    let folds = (0..k)
        .map(|fold| {
            let mut train = Vec::new();
            let mut test = Vec::new();
            for (subject, group) in groups.iter().enumerate() {
                if fold_of_subject.get(subject) == Some(&fold) {
                    test.extend(&group.scans);
                } else {
                    train.extend(&group.scans);
                }
            }
            train.sort_unstable();
            test.sort_unstable();
            Fold {
                name: (fold + 1).to_string(),
                train,
                test,
            }
        })
        .collect();
    Ok(folds)
}

/// One fold per site (sites in sorted order): test on that site, train on the
/// rest. Errors when a fold's train or test side would hold a single class.
pub fn leave_site_out(labels: &[u32], sites: &[String]) -> Result<Vec<Fold>> {
    let mut by_site: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (scan, site) in sites.iter().enumerate().take(labels.len()) {
        by_site.entry(site.as_str()).or_default().push(scan);
    }
    let mut folds = Vec::with_capacity(by_site.len());
    for (site, test) in &by_site {
        let train: Vec<usize> = (0..labels.len().min(sites.len()))
            .filter(|scan| sites.get(*scan).map(String::as_str) != Some(site))
            .collect();
        for (side, indices) in [("train", &train), ("test", test)] {
            let mut classes: Vec<u32> = indices
                .iter()
                .filter_map(|&i| labels.get(i).copied())
                .collect();
            classes.sort_unstable();
            classes.dedup();
            if classes.len() < 2 {
                return Err(DataError::OneClassFold {
                    fold: format!("\"{site}\""),
                    side,
                    class: classes
                        .first()
                        .map_or("none".to_string(), |c| c.to_string()),
                });
            }
        }
        folds.push(Fold {
            name: site.to_string(),
            train,
            test: test.clone(),
        });
    }
    Ok(folds)
}

/// Keeps a stratified fraction of a training fold's subjects (all their scans):
/// round(fraction x subjects) of each class, at least one. Returns sorted scan indices.
pub fn subsample_labeled(
    train: &[usize],
    labels: &[u32],
    subjects: &[String],
    fraction: f64,
    seed: u64,
) -> Result<Vec<usize>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(DataError::BadFraction { fraction });
    }
    let groups = group_by_subject(labels, subjects, train)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut kept = Vec::new();
    for members in subjects_by_class(&groups).values() {
        let keep = ((fraction * members.len() as f64).round() as usize).clamp(1, members.len());
        let mut shuffled = members.clone();
        shuffled.shuffle(&mut rng);
        for subject in shuffled.iter().take(keep) {
            if let Some(group) = groups.get(*subject) {
                kept.extend(&group.scans);
            }
        }
    }
    kept.sort_unstable();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// Labels and subjects for `per_class[c]` subjects of class c, each with
    /// `scans_per_subject[i % len]` scans, interleaved so scans are not sorted by class.
    fn population(per_class: &[usize], scans_per_subject: &[usize]) -> (Vec<u32>, Vec<String>) {
        let mut labels = Vec::new();
        let mut subjects = Vec::new();
        let mut counter = 0;
        let most = per_class.iter().copied().max().unwrap_or(0);
        for i in 0..most {
            for (class, &n) in per_class.iter().enumerate() {
                if i < n {
                    let scans = scans_per_subject[counter % scans_per_subject.len()];
                    for _ in 0..scans {
                        labels.push(class as u32);
                        subjects.push(format!("c{class}s{i}"));
                    }
                    counter += 1;
                }
            }
        }
        (labels, subjects)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn kfold_is_disjoint_covering_subject_disjoint_balanced_and_seeded(
            per_class in prop::collection::vec(5usize..25, 2..4),
            scans_per_subject in prop::collection::vec(1usize..4, 1..4),
            k in 2usize..6,
            seed in any::<u64>(),
        ) {
            let (labels, subjects) = population(&per_class, &scans_per_subject);
            let folds = stratified_subject_kfold(&labels, &subjects, k, seed).unwrap();
            prop_assert_eq!(folds.len(), k);
            let mut tested = vec![0usize; labels.len()];
            for fold in &folds {
                let train: HashSet<usize> = fold.train.iter().copied().collect();
                prop_assert!(fold.test.iter().all(|i| !train.contains(i)));
                prop_assert_eq!(fold.train.len() + fold.test.len(), labels.len());
                for &i in &fold.test { tested[i] += 1; }
                let train_subjects: HashSet<&String> = fold.train.iter().map(|&i| &subjects[i]).collect();
                prop_assert!(fold.test.iter().all(|&i| !train_subjects.contains(&subjects[i])));
                for (class, &n) in per_class.iter().enumerate() {
                    let in_test: HashSet<&String> = fold.test.iter()
                        .filter(|&&i| labels[i] == class as u32).map(|&i| &subjects[i]).collect();
                    let ideal = n as f64 / k as f64;
                    prop_assert!((in_test.len() as f64 - ideal).abs() < 1.0,
                        "class {} fold {}: {} subjects, ideal {}", class, fold.name, in_test.len(), ideal);
                }
            }
            prop_assert!(tested.iter().all(|&t| t == 1), "every scan tested exactly once");
            prop_assert_eq!(&folds, &stratified_subject_kfold(&labels, &subjects, k, seed).unwrap());
        }

        #[test]
        fn subsampling_keeps_a_stratified_subject_subset(
            per_class in prop::collection::vec(2usize..30, 2..4),
            fraction_index in 0usize..5,
            seed in any::<u64>(),
        ) {
            let fraction = [0.2, 0.4, 0.6, 0.8, 1.0][fraction_index];
            let (labels, subjects) = population(&per_class, &[1, 2]);
            let train: Vec<usize> = (0..labels.len()).collect();
            let kept = subsample_labeled(&train, &labels, &subjects, fraction, seed).unwrap();
            for (class, &n) in per_class.iter().enumerate() {
                let kept_subjects: HashSet<&String> = kept.iter()
                    .filter(|&&i| labels[i] == class as u32).map(|&i| &subjects[i]).collect();
                let expected = ((fraction * n as f64).round() as usize).clamp(1, n);
                prop_assert_eq!(kept_subjects.len(), expected);
            }
            // A kept subject keeps all of its scans.
            let kept_subjects: HashSet<&String> = kept.iter().map(|&i| &subjects[i]).collect();
            let all_scans = (0..labels.len()).filter(|&i| kept_subjects.contains(&subjects[i])).count();
            prop_assert_eq!(all_scans, kept.len());
            prop_assert_eq!(kept, subsample_labeled(&train, &labels, &subjects, fraction, seed).unwrap());
        }
    }

    #[test]
    fn data_kfold_rejects_k_above_a_class_subject_count() {
        let (labels, subjects) = population(&[10, 3], &[2]);
        let err = stratified_subject_kfold(&labels, &subjects, 5, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot make 5 folds: class 1 has only 3 subjects (k must be between 2 and the smallest class's subject count)"
        );
        assert!(stratified_subject_kfold(&labels, &subjects, 1, 0).is_err());
        assert!(stratified_subject_kfold(&labels, &subjects, 3, 0).is_ok());
    }

    #[test]
    fn different_seeds_give_different_folds() {
        let (labels, subjects) = population(&[20, 20], &[1]);
        let a = stratified_subject_kfold(&labels, &subjects, 5, 1).unwrap();
        let b = stratified_subject_kfold(&labels, &subjects, 5, 2).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn leave_site_out_folds_and_one_class_site_error() {
        let labels = vec![0, 1, 0, 1, 0, 1];
        let sites: Vec<String> = ["A", "A", "B", "B", "C", "C"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let folds = leave_site_out(&labels, &sites).unwrap();
        assert_eq!(folds.len(), 3);
        assert_eq!(folds[1].name, "B");
        assert_eq!(folds[1].test, vec![2, 3]);
        assert_eq!(folds[1].train, vec![0, 1, 4, 5]);

        let one_class_site: Vec<String> = ["A", "A", "B", "B", "C", "D"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = leave_site_out(&labels, &one_class_site).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fold \"C\" would be one-class: its test set has only class 0"
        );
    }

    #[test]
    fn subsampling_rejects_fractions_outside_unit_interval() {
        let (labels, subjects) = population(&[4, 4], &[1]);
        let train: Vec<usize> = (0..8).collect();
        for fraction in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(matches!(
                subsample_labeled(&train, &labels, &subjects, fraction, 0),
                Err(DataError::BadFraction { .. })
            ));
        }
    }
}
