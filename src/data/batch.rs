//! Batches for the GPU side: crops of length T from z-scored scans, laid out
//! row-major as [B, N, T] with a [B, T] validity mask.
//!
//! Every random choice (scan order, crop starts) is made up front in a *plan*
//! (`Vec<Vec<Crop>>`, one inner Vec per batch) from a ChaCha8 stream keyed by
//! (seed, epoch). Assembling a batch from a plan is pure, so the background
//! prefetcher yields exactly the same batches as the in-thread iterator,
//! whatever the thread timing.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::dataset::Dataset;

/// One batch on the host, ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// [B, N, T] row-major: x[(b * n + region) * t + frame].
    pub x: Vec<f32>,
    /// [B, T]: 1 for real frames, 0 for padding (scans shorter than T).
    pub valid: Vec<f32>,
    /// Class index of each crop's scan.
    pub labels: Vec<u32>,
    /// Index into `Dataset::scans` of each crop (eval averages logits per scan).
    pub scan_index: Vec<usize>,
    pub b: usize,
    pub n: usize,
    pub t: usize,
}

/// One crop: frames [start, start + T) of a scan (padded past the scan's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub scan: usize,
    pub start: usize,
}

/// A batch plan: one inner Vec of crops per batch.
pub type Plan = Vec<Vec<Crop>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batcher {
    pub batch_size: usize,
    /// T, the crop length in frames.
    pub crop_length: usize,
    pub seed: u64,
    /// Drop the last, smaller training batch (batch statistics in the loss
    /// are noisy on a handful of samples). Evaluation never drops.
    pub drop_last: bool,
    /// K, fixed crops per scan in evaluation.
    pub eval_crops: usize,
}

impl Batcher {
    /// Training: the given scans shuffled, one random crop each, cut into batches.
    pub fn training_plan(&self, dataset: &Dataset, scans: &[usize], epoch: u64) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = scans
            .iter()
            .copied()
            .filter(|&s| s < dataset.scans.len())
            .collect();
        order.shuffle(&mut rng);
        let crops: Vec<Crop> = order
            .into_iter()
            .map(|scan| {
                let length = dataset.scans.get(scan).map_or(0, |s| s.length());
                let last_start = length.saturating_sub(self.crop_length);
                Crop {
                    scan,
                    start: rng.gen_range(0..=last_start),
                }
            })
            .collect();
        let batch_size = self.batch_size.max(1);
        crops
            .chunks(batch_size)
            .filter(|chunk| !self.drop_last || chunk.len() == batch_size)
            .map(<[Crop]>::to_vec)
            .collect()
    }

    /// Evaluation: K crops per scan, evenly spaced from the first frame to the
    /// last (one crop when the scan is no longer than T), in scan order.
    pub fn evaluation_plan(&self, dataset: &Dataset, scans: &[usize]) -> Plan {
        let crops: Vec<Crop> = scans
            .iter()
            .filter_map(|&scan| dataset.scans.get(scan).map(|s| (scan, s.length())))
            .flat_map(|(scan, length)| {
                evenly_spaced_starts(length, self.crop_length, self.eval_crops)
                    .into_iter()
                    .map(move |start| Crop { scan, start })
            })
            .collect();
        crops
            .chunks(self.batch_size.max(1))
            .map(<[Crop]>::to_vec)
            .collect()
    }

    /// The training batches of one epoch, assembled on the calling thread.
    pub fn epoch<'a>(
        &self,
        dataset: &'a Dataset,
        scans: &[usize],
        epoch: u64,
    ) -> impl Iterator<Item = HostBatch> + 'a {
        let crop_length = self.crop_length;
        self.training_plan(dataset, scans, epoch)
            .into_iter()
            .map(move |crops| assemble(dataset, &crops, crop_length))
    }

    /// Evaluation batches, assembled on the calling thread.
    pub fn evaluation<'a>(
        &self,
        dataset: &'a Dataset,
        scans: &[usize],
    ) -> impl Iterator<Item = HostBatch> + 'a {
        let crop_length = self.crop_length;
        self.evaluation_plan(dataset, scans)
            .into_iter()
            .map(move |crops| assemble(dataset, &crops, crop_length))
    }

    /// Assembles the plan's batches on a background thread, two ahead.
    pub fn prefetch(&self, dataset: Arc<Dataset>, plan: Plan) -> Prefetcher {
        Prefetcher::spawn(dataset, plan, self.crop_length)
    }
}

/// K starts spread evenly over [0, length - T], first and last included.
pub fn evenly_spaced_starts(length: usize, crop_length: usize, crops: usize) -> Vec<usize> {
    let last_start = length.saturating_sub(crop_length);
    if last_start == 0 || crops <= 1 {
        return vec![last_start / 2];
    }
    let mut starts: Vec<usize> = (0..crops)
        .map(|i| ((i as f64) * last_start as f64 / (crops - 1) as f64).round() as usize)
        .collect();
    // A scan only slightly longer than T has fewer distinct crops than K.
    starts.dedup();
    starts
}

/// Copies the crops into a `HostBatch`; frames past a scan's end are zero with valid = 0.
pub fn assemble(dataset: &Dataset, crops: &[Crop], crop_length: usize) -> HostBatch {
    let (b, n, t) = (crops.len(), dataset.n_regions, crop_length);
    let mut x = vec![0f32; b * n * t];
    let mut valid = vec![0f32; b * t];
    let mut labels = Vec::with_capacity(b);
    let mut scan_index = Vec::with_capacity(b);
    for (item, crop) in crops.iter().enumerate() {
        scan_index.push(crop.scan);
        let Some(scan) = dataset.scans.get(crop.scan) else {
            labels.push(0);
            continue;
        };
        labels.push(scan.label);
        let frames = scan.length().saturating_sub(crop.start).min(t);
        if let Some(mask) = valid.get_mut(item * t..item * t + frames) {
            mask.fill(1.0);
        }
        for (region, series) in scan.data.rows().into_iter().enumerate().take(n) {
            let offset = (item * n + region) * t;
            let (Some(destination), Some(source)) = (
                x.get_mut(offset..offset + frames),
                series
                    .as_slice()
                    .and_then(|s| s.get(crop.start..crop.start + frames)),
            ) else {
                // Non-contiguous row (not produced by the loaders): copy element by element.
                for frame in 0..frames {
                    if let (Some(d), Some(s)) =
                        (x.get_mut(offset + frame), series.get(crop.start + frame))
                    {
                        *d = *s;
                    }
                }
                continue;
            };
            destination.copy_from_slice(source);
        }
    }
    HostBatch {
        x,
        valid,
        labels,
        scan_index,
        b,
        n,
        t,
    }
}

/// Assembles batches on a background thread and hands them over through a
/// channel of capacity 2, so the next batch is ready while the GPU computes.
/// Batches arrive in plan order. Dropping it stops the thread.
pub struct Prefetcher {
    receiver: Option<Receiver<HostBatch>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub fn spawn(dataset: Arc<Dataset>, plan: Plan, crop_length: usize) -> Self {
        let (sender, receiver) = sync_channel(2);
        let worker = std::thread::Builder::new()
            .name("stptf-prefetch".to_string())
            .spawn(move || {
                for crops in plan {
                    // The consumer hung up (stopped early): nothing left to do.
                    if sender
                        .send(assemble(&dataset, &crops, crop_length))
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(|e| {
                log::error!("cannot start the prefetch thread: {e}; the epoch will be empty")
            })
            .ok();
        Prefetcher {
            receiver: Some(receiver),
            worker,
        }
    }
}

impl Iterator for Prefetcher {
    type Item = HostBatch;
    fn next(&mut self) -> Option<HostBatch> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Close the channel first so a worker blocked in `send` wakes up and exits.
        self.receiver.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Scans whose value at (region, frame) is 1000 * scan + 100 * region + frame
    /// before z-scoring; we skip z-scoring by checking relative positions only.
    fn dataset(lengths: &[usize], regions: usize) -> Dataset {
        let arrays: Vec<Array2<f32>> = lengths
            .iter()
            .map(|&length| {
                Array2::from_shape_fn((regions, length), |(r, t)| (r * 7 + t * t) as f32)
            })
            .collect();
        let labels = (0..lengths.len() as u32).map(|i| i % 2).collect();
        Dataset::from_arrays(arrays, labels, vec!["a".into(), "b".into()], 8).unwrap()
    }

    fn batcher(batch_size: usize, crop_length: usize) -> Batcher {
        Batcher {
            batch_size,
            crop_length,
            seed: 7,
            drop_last: false,
            eval_crops: 4,
        }
    }

    #[test]
    fn data_training_epoch_visits_each_scan_once_with_in_bounds_crops() {
        let data = dataset(&[20, 12, 30, 9, 15], 3);
        let scans: Vec<usize> = (0..5).collect();
        let plan = batcher(2, 8).training_plan(&data, &scans, 0);
        assert_eq!(plan.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let mut visited: Vec<usize> = plan.iter().flatten().map(|c| c.scan).collect();
        visited.sort_unstable();
        assert_eq!(visited, scans);
        for crop in plan.iter().flatten() {
            assert!(crop.start + 8 <= data.scans[crop.scan].length());
        }
        let dropping = Batcher {
            drop_last: true,
            ..batcher(2, 8)
        };
        assert_eq!(dropping.training_plan(&data, &scans, 0).len(), 2);
    }

    #[test]
    fn plans_are_seeded_and_differ_between_epochs() {
        let data = dataset(&[40; 16], 2);
        let scans: Vec<usize> = (0..16).collect();
        let b = batcher(4, 8);
        assert_eq!(
            b.training_plan(&data, &scans, 3),
            b.training_plan(&data, &scans, 3)
        );
        assert_ne!(
            b.training_plan(&data, &scans, 3),
            b.training_plan(&data, &scans, 4)
        );
        let other_seed = Batcher { seed: 8, ..b };
        assert_ne!(
            b.training_plan(&data, &scans, 3),
            other_seed.training_plan(&data, &scans, 3)
        );
    }

    #[test]
    fn assembled_batch_copies_the_crop_and_pads_short_scans() {
        let data = dataset(&[12, 5], 2);
        let crops = [Crop { scan: 0, start: 3 }, Crop { scan: 1, start: 0 }];
        let batch = assemble(&data, &crops, 8);
        assert_eq!((batch.b, batch.n, batch.t), (2, 2, 8));
        assert_eq!(batch.x.len(), 2 * 2 * 8);
        assert_eq!(batch.labels, vec![0, 1]);
        assert_eq!(batch.scan_index, vec![0, 1]);
        for region in 0..2 {
            let got = &batch.x[region * 8..region * 8 + 8];
            let want: Vec<f32> = (3..11).map(|t| data.scans[0].data[[region, t]]).collect();
            assert_eq!(got, want.as_slice());
            let padded = &batch.x[(2 + region) * 8..(2 + region) * 8 + 8];
            assert_eq!(&padded[5..], &[0.0; 3]);
            assert_eq!(padded[4], data.scans[1].data[[region, 4]]);
        }
        assert_eq!(&batch.valid[..8], &[1.0; 8]);
        assert_eq!(&batch.valid[8..], &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn evaluation_crops_are_evenly_spaced_and_cover_both_ends() {
        assert_eq!(evenly_spaced_starts(20, 8, 4), vec![0, 4, 8, 12]);
        assert_eq!(evenly_spaced_starts(8, 8, 4), vec![0]);
        assert_eq!(evenly_spaced_starts(5, 8, 4), vec![0]);
        assert_eq!(evenly_spaced_starts(10, 8, 8), vec![0, 1, 2]);
        assert_eq!(evenly_spaced_starts(20, 8, 1), vec![6]);
        let data = dataset(&[20, 5], 2);
        let plan = batcher(3, 8).evaluation_plan(&data, &[0, 1]);
        let all: Vec<Crop> = plan.into_iter().flatten().collect();
        assert_eq!(all.len(), 5);
        assert_eq!(all[4], Crop { scan: 1, start: 0 });
    }

    #[test]
    fn prefetcher_yields_the_same_batches_as_the_plain_iterator() {
        let data = Arc::new(dataset(&[30, 25, 40, 19, 33, 28, 50], 4));
        let scans: Vec<usize> = (0..7).collect();
        let b = batcher(3, 16);
        let direct: Vec<HostBatch> = b.epoch(&data, &scans, 2).collect();
        let prefetched: Vec<HostBatch> = b
            .prefetch(data.clone(), b.training_plan(&data, &scans, 2))
            .collect();
        assert_eq!(direct, prefetched);
        // Stopping early must not hang.
        let mut early = b.prefetch(data.clone(), b.training_plan(&data, &scans, 2));
        assert!(early.next().is_some());
        drop(early);
    }
}
