//! The binding planner: the one place that decides how a launch is split
//! when a tensor is larger than one storage binding.
//!
//! lavapipe binds at most 128 MiB per storage buffer and activations such as
//! [B, N·F, T] exceed that, so launchers split their work. Every bound range
//! must also start at a multiple of the device's
//! `min_storage_buffer_offset_alignment` (256 bytes = 64 f32 on lavapipe). A
//! family takes one of four strategies, and this module computes and checks
//! the alignment for all of them:
//!
//! - [`Planner::flat`]: elementwise work in ranges of at most one binding,
//!   each starting at an aligned element (the kernel is told its `base`);
//! - [`Planner::aligned_rows`]: leading rows (batch items, outer slices) in
//!   groups whose size keeps every binding's offset aligned;
//! - [`Planner::offset_rows`]: any number of rows per launch, each range
//!   bound from the aligned offset at or below it ([`Planner::bind`]) with
//!   the remainder passed to the shader, which adds it to every index;
//! - [`Planner::whole`]: the family cannot split; a tensor above the limit
//!   is refused with an error naming the op, the size, the limit and why.

use std::ops::Range;

use super::{Arg, Gpu, GpuError, Result, Tensor};

/// How one op plans its launches on one device.
#[derive(Clone, Copy, Debug)]
pub struct Planner {
    op: &'static str,
    /// Largest binding in elements.
    limit: usize,
    /// Binding offset alignment in elements.
    align: usize,
}

/// Consecutive ranges covering `0..total`, each at most `step` long (the last
/// may be shorter). Rows or elements, depending on the strategy.
#[derive(Clone, Debug)]
pub struct Pieces {
    total: usize,
    step: usize,
    /// Every range starts at a multiple of this (the strategy's alignment).
    granule: usize,
    next: usize,
}

impl Pieces {
    /// The length of every range but possibly the last.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Caps the range length, e.g. at a grid dimension's workgroup limit,
    /// rounded down to the strategy's alignment granule (at most 64, so any
    /// grid limit leaves room for one).
    pub fn at_most(self, cap: usize) -> Pieces {
        let cap = (cap / self.granule * self.granule).max(self.granule);
        Pieces {
            step: self.step.min(cap),
            ..self
        }
    }

    /// How many launches the plan makes.
    pub fn launches(&self) -> usize {
        self.total.div_ceil(self.step)
    }
}

impl Iterator for Pieces {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.next >= self.total {
            return None;
        }
        let start = self.next;
        self.next = (start + self.step).min(self.total);
        Some(start..self.next)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

impl Gpu {
    /// The binding planner for `op` on this device (see [`Planner`]).
    pub fn planner(&self, op: &'static str) -> Planner {
        Planner::new(
            op,
            self.max_binding_bytes(),
            self.report.limits.min_storage_buffer_offset_alignment,
        )
    }
}

impl Planner {
    /// A planner for bindings of at most `limit_bytes` that must start at
    /// multiples of `offset_alignment` bytes. WebGPU guarantees the alignment
    /// is a power of two of at least 32 bytes; a device reporting something
    /// else still gets whole-f32 alignment (never below 4 bytes).
    pub fn new(op: &'static str, limit_bytes: u64, offset_alignment: u32) -> Planner {
        let align_bytes = offset_alignment.max(4).next_power_of_two();
        Planner {
            op,
            limit: (limit_bytes / 4) as usize,
            align: (align_bytes / 4) as usize,
        }
    }

    /// Binding offset alignment in elements.
    pub fn align_elems(&self) -> usize {
        self.align
    }

    /// Largest binding in elements.
    pub fn limit_elems(&self) -> usize {
        self.limit
    }

    fn limit_bytes(&self) -> u64 {
        self.limit as u64 * 4
    }

    fn too_large(&self, what: String, elems: usize, reason: &str) -> GpuError {
        GpuError::BindingLimit {
            op: self.op,
            what,
            bytes: elems as u64 * 4,
            limit: self.limit_bytes(),
            reason: reason.to_string(),
        }
    }

    /// `n` elements in ranges of at most one binding, each starting at a
    /// multiple of the alignment and of `granule` (e.g. the elements one
    /// workgroup reduces, so partial sums never straddle two launches).
    pub fn flat(&self, n: usize, granule: usize) -> Result<Pieces> {
        let step = lcm(self.align, granule.max(1));
        let fit = self.limit / step * step;
        if n > self.limit && fit == 0 {
            return Err(self.too_large(
                format!("a range of {step} elements"),
                step,
                "the smallest aligned range of this op does not fit",
            ));
        }
        Ok(Pieces {
            total: n,
            step: if n <= self.limit { n.max(1) } else { fit },
            granule: step,
            next: 0,
        })
    }

    /// `rows` rows where row `r` of binding `k` occupies elements
    /// `r * per_row[k] .. (r + 1) * per_row[k]`: launches take as many rows
    /// as fit in one binding, a multiple of the count that keeps every
    /// binding's offset aligned. One launch when everything fits.
    pub fn aligned_rows(&self, rows: usize, per_row: &[usize]) -> Result<Pieces> {
        let widest = per_row.iter().copied().max().unwrap_or(0).max(1);
        let step = per_row
            .iter()
            .filter(|&&s| s > 0)
            .map(|&s| self.align / gcd(s, self.align))
            .fold(1, lcm);
        if rows.saturating_mul(widest) <= self.limit {
            return Ok(Pieces {
                total: rows,
                step: rows.max(1),
                granule: step,
                next: 0,
            });
        }
        let fit = (self.limit / widest / step) * step;
        if fit == 0 {
            return Err(if widest > self.limit {
                self.too_large(
                    format!("one row of {widest} values"),
                    widest,
                    "work is split between rows, never inside one",
                )
            } else {
                self.too_large(
                    format!("{step} rows of {widest} values"),
                    step * widest,
                    "rows are split in groups of the fewest that keep binding offsets aligned, and one group does not fit",
                )
            });
        }
        Ok(Pieces {
            total: rows,
            step: fit,
            granule: step,
            next: 0,
        })
    }

    /// `rows` rows as in [`Planner::aligned_rows`], but any row count per
    /// launch: each range is bound with [`Planner::bind`] from the aligned
    /// offset at or below it, so one alignment unit of each binding is kept
    /// free for the remainder.
    pub fn offset_rows(&self, rows: usize, per_row: &[usize]) -> Result<Pieces> {
        let widest = per_row.iter().copied().max().unwrap_or(0).max(1);
        if rows.saturating_mul(widest) <= self.limit {
            return Ok(Pieces {
                total: rows,
                step: rows.max(1),
                granule: 1,
                next: 0,
            });
        }
        let capacity = self.limit.saturating_sub(self.align - 1);
        let fit = capacity / widest;
        if fit == 0 {
            return Err(self.too_large(
                format!("one row of {widest} values"),
                widest,
                "work is split between rows, never inside one",
            ));
        }
        Ok(Pieces {
            total: rows,
            step: fit,
            granule: 1,
            next: 0,
        })
    }

    /// Binds `t[range]` from the aligned offset at or below `range.start`;
    /// returns the argument and the element remainder the shader must add
    /// to its indices.
    pub fn bind<'a>(&self, t: &'a Tensor, range: Range<usize>) -> (Arg<'a>, u32) {
        let base = range.start / self.align * self.align;
        (t.range(base, range.end - base), (range.start - base) as u32)
    }

    /// For families that bind each tensor whole: errors when one of them is
    /// larger than a binding. `why` says why the family cannot split.
    pub fn whole(&self, tensors: &[&Tensor], why: &str) -> Result<()> {
        for t in tensors {
            self.fits(&format!("tensor {:?}", t.shape()), t.len(), why)?;
        }
        Ok(())
    }

    /// Errors when one bound range of `elems` values (`what`, e.g. "one B
    /// matrix (16x16)") is larger than a binding; `why` says why it is not
    /// split further.
    pub fn fits(&self, what: &str, elems: usize, why: &str) -> Result<()> {
        if elems > self.limit {
            return Err(self.too_large(what.to_string(), elems, why));
        }
        Ok(())
    }

    /// Checks that a bound range starts at an aligned offset (the launcher's
    /// last line of defence; every plan above satisfies it).
    pub(super) fn check_offset(&self, offset_elems: u64) -> bool {
        offset_elems % self.align as u64 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 KiB bindings (256 values), 256-byte alignment (64 values).
    fn small() -> Planner {
        Planner::new("t", 1024, 256)
    }

    fn covers(p: Pieces, total: usize) -> Vec<Range<usize>> {
        let v: Vec<_> = p.collect();
        assert_eq!(v.first().map(|r| r.start), Some(0).filter(|_| total > 0));
        for w in v.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(v.last().map(|r| r.end).unwrap_or(0), total);
        v
    }

    #[test]
    fn flat_ranges_are_aligned_and_fit() {
        let p = small();
        let v = covers(p.flat(1000, 1).unwrap(), 1000);
        assert_eq!(v.len(), 4);
        for r in &v {
            assert_eq!(r.start % 64, 0);
            assert!(r.len() <= 256);
        }
        // A granule larger than the alignment: ranges are whole granules.
        let v = covers(p.flat(1000, 96).unwrap(), 1000);
        for r in &v {
            assert_eq!(r.start % 192, 0, "{r:?}");
        }
        // Fits: one range.
        assert_eq!(covers(p.flat(200, 4096).unwrap(), 200).len(), 1);
        let e = p.flat(1000, 4096).unwrap_err().to_string();
        assert!(e.contains("t:") && e.contains("1024-byte"), "{e}");
    }

    #[test]
    fn row_plans_fit_and_keep_offsets_aligned() {
        let p = small();
        assert_eq!(p.aligned_rows(3, &[10, 5]).unwrap().launches(), 1);
        for per_row in [[2usize, 1], [3, 1], [4, 4], [1, 1]] {
            let plan = p.aligned_rows(1000, &per_row).unwrap();
            let n = plan.step();
            assert!(n * per_row[0].max(per_row[1]) <= 256, "{per_row:?}: {n}");
            for r in covers(plan, 1000) {
                for &s in &per_row {
                    assert_eq!((r.start * s) % 64, 0, "{per_row:?}: {r:?}");
                }
            }
        }
        let e = p.aligned_rows(1000, &[257]).unwrap_err().to_string();
        assert!(
            e.contains("one row of 257 values is 1028 bytes, over the 1024-byte"),
            "{e}"
        );
        // Rows of 3 values fit, but keeping offsets aligned takes groups of 64.
        let e = p.aligned_rows(1000, &[3, 5]).unwrap_err().to_string();
        assert!(e.contains("64 rows of 5 values"), "{e}");
    }

    #[test]
    fn offset_plans_leave_room_for_the_remainder() {
        let p = small();
        let plan = p.offset_rows(50, &[21, 7]).unwrap();
        // 256 - 63 = 193 values of room: 9 rows of 21.
        assert_eq!(plan.step(), 9);
        for r in covers(plan, 50) {
            let range = r.start * 21..r.end * 21;
            let base = range.start / 64 * 64;
            assert!(range.end - base <= 256, "{r:?}");
        }
        let e = p.offset_rows(50, &[194]).unwrap_err().to_string();
        assert!(e.contains("never inside one"), "{e}");
    }
}
