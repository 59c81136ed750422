//! Per-scan preprocessing: z-score each region over the whole scan.

use ndarray::Array2;

/// Z-scores every region (row) of a [regions, time] scan in place, over the
/// full scan length, with f64 accumulation and the population standard
/// deviation (ddof = 0). A region with zero variance (all-zero: outside the
/// field of view, or constant) is set to all zeros rather than NaN.
/// Returns how many regions had zero variance.
pub fn zscore_regions(scan: &mut Array2<f32>) -> usize {
    let mut constant_regions = 0;
    for mut region in scan.rows_mut() {
        let length = region.len();
        if length == 0 {
            continue;
        }
        let mean = region.iter().map(|&v| f64::from(v)).sum::<f64>() / length as f64;
        let variance = region
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / length as f64;
        let std = variance.sqrt();
        // A constant region's computed std is rounding noise around 0; relative to
        // its mean it is ~1e-16, far below any real signal's fluctuation.
        if std == 0.0 || std <= 1e-7 * mean.abs() {
            region.fill(0.0);
            constant_regions += 1;
        } else {
            region.mapv_inplace(|v| ((f64::from(v) - mean) / std) as f32);
        }
    }
    constant_regions
}

/// Number of regions that are exactly zero at every time point.
pub fn all_zero_regions(scan: &Array2<f32>) -> usize {
    scan.rows()
        .into_iter()
        .filter(|region| region.iter().all(|&v| v == 0.0))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn data_zscore_gives_zero_mean_unit_variance() {
        let mut scan = array![[1.0f32, 2.0, 3.0, 4.0], [10.0, 10.5, 9.5, 10.0]];
        let constant = zscore_regions(&mut scan);
        assert_eq!(constant, 0);
        for region in scan.rows() {
            let mean: f64 = region.iter().map(|&v| v as f64).sum::<f64>() / 4.0;
            let var: f64 = region
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / 4.0;
            assert_abs_diff_eq!(mean, 0.0, epsilon = 1e-6);
            assert_abs_diff_eq!(var, 1.0, epsilon = 1e-5);
        }
    }

    #[test]
    fn zero_and_constant_regions_stay_zero_and_are_counted() {
        let mut scan = array![[0.0f32, 0.0, 0.0], [7.25, 7.25, 7.25], [1.0, 2.0, 3.0]];
        assert_eq!(all_zero_regions(&scan), 1);
        assert_eq!(zscore_regions(&mut scan), 2);
        assert!(scan.iter().all(|v| v.is_finite()));
        assert_eq!(scan.row(0).to_vec(), vec![0.0; 3]);
        assert_eq!(scan.row(1).to_vec(), vec![0.0; 3]);
    }
}
