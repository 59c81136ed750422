//! The one differentiable collective of data-parallel training
//! (`crate::dist`): an all-gather of rows.

use super::{Tape, Var};
use crate::dist::Collective;
use crate::gpu::{GpuError, Result};

impl Tape<'_> {
    /// The rows of `v` [R, ..] of every rank, concatenated in rank order:
    /// [P·R, ..]. Its backward hands this rank its own rows of the gradient,
    /// which is the exact gradient of a loss computed identically on every
    /// rank from the gathered rows. With one rank it is `v` itself (nothing
    /// recorded).
    ///
    /// GPU ordering point: the forward reads `v` back (a submit and a wait)
    /// and uploads the gathered rows, so the ops recorded before it run
    /// before the collective.
    pub fn all_gather_rows(&mut self, v: Var, comm: &dyn Collective, what: &str) -> Result<Var> {
        let size = comm.size();
        if size == 1 {
            return Ok(v);
        }
        let shape = self.shape(v).to_vec();
        let Some(&rows) = shape.first() else {
            return Err(GpuError::Shape {
                op: "all_gather_rows",
                message: "a scalar has no rows to gather".into(),
            });
        };
        let local = self.gpu.read(self.value(v))?;
        let all = comm.all_gather(&local, what)?;
        let mut out_shape = shape.clone();
        out_shape[0] = rows * size;
        let gathered = self.gpu.upload(&all, &out_shape)?;
        let (first, len) = (comm.rank() * local.len(), local.len());
        Ok(self.push(
            gathered,
            &[v],
            Box::new(move |gpu, g| {
                let mine = gpu.empty(&shape);
                gpu.copy_region(g, first, &mine, 0, len)?;
                Ok(vec![Some(mine)])
            }),
        ))
    }
}
