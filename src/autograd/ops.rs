//! Differentiable wrappers: each runs a forward kernel and pushes a backward
//! closure that calls the op family's backward kernels.

use super::{Tape, Var};
use crate::gpu::{Result, Tensor};
use crate::ops::elementwise::{self, Unary};
use crate::ops::matmul::{self, Spec};

impl Tape<'_> {
    /// `op(a)·op(b)`, batched, with 2-D operands broadcast (shared weights).
    pub fn matmul(&mut self, a: Var, b: Var, spec: Spec) -> Result<Var> {
        let (ta, tb) = (self.value(a).clone(), self.value(b).clone());
        let out = matmul::matmul(self.gpu, &ta, &tb, spec)?;
        let (na, nb) = (self.needs_grad(a), self.needs_grad(b));
        Ok(self.push(
            out,
            &[a, b],
            Box::new(move |gpu, g| {
                let (da, db) = matmul::matmul_backward_selected(gpu, &ta, &tb, g, spec, na, nb)?;
                Ok(vec![da, db])
            }),
        ))
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let out = elementwise::add(self.gpu, self.value(a), self.value(b))?;
        Ok(self.push(
            out,
            &[a, b],
            Box::new(|_, g| Ok(vec![Some(g.clone()), Some(g.clone())])),
        ))
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (ta, tb) = (self.value(a).clone(), self.value(b).clone());
        let out = elementwise::mul(self.gpu, &ta, &tb)?;
        Ok(self.push(
            out,
            &[a, b],
            Box::new(move |gpu, g| {
                Ok(vec![
                    Some(elementwise::mul(gpu, g, &tb)?),
                    Some(elementwise::mul(gpu, g, &ta)?),
                ])
            }),
        ))
    }

    /// `a ⊙ c` with a constant `c` broadcast over one middle dimension of `a`
    /// viewed as [outer, mid, inner] (`c` holds [outer, inner]; see
    /// `elementwise::mul_broadcast`). The backward is the same product of the
    /// upstream gradient, and `c` gets none: unlike [`Tape::mul`] with a
    /// `Tape::input`, no [outer, mid, inner] copy of `c` is made and no
    /// gradient for it is computed and dropped.
    pub fn mul_constant_broadcast(
        &mut self,
        a: Var,
        c: &Tensor,
        inner: usize,
        mid: usize,
    ) -> Result<Var> {
        let out = elementwise::mul_broadcast(self.gpu, self.value(a), c, inner, mid)?;
        let c = c.clone();
        Ok(self.push(
            out,
            &[a],
            Box::new(move |gpu, g| {
                Ok(vec![Some(elementwise::mul_broadcast(
                    gpu, g, &c, inner, mid,
                )?)])
            }),
        ))
    }

    /// `alpha * a + beta`.
    pub fn scale(&mut self, a: Var, alpha: f32, beta: f32) -> Result<Var> {
        let out = elementwise::scale(self.gpu, self.value(a), alpha, beta)?;
        Ok(self.push(
            out,
            &[a],
            Box::new(move |gpu, g| Ok(vec![Some(elementwise::scale(gpu, g, alpha, 0.0)?)])),
        ))
    }

    /// `x + bias` over the last dimension; the bias gradient sums all other dimensions.
    pub fn bias_add(&mut self, x: Var, bias: Var) -> Result<Var> {
        let out = elementwise::bias_add(self.gpu, self.value(x), self.value(bias))?;
        let c = self.value(bias).len();
        Ok(self.push(
            out,
            &[x, bias],
            Box::new(move |gpu, g| {
                // Σ over rows as a matmul: ones[1, rows] · g[rows, c].
                let rows = g.len() / c;
                let ones = gpu.full(&[1, rows], 1.0)?;
                let db =
                    matmul::matmul(gpu, &ones, &g.reshape(&[rows, c])?, Spec::NN)?.reshape(&[c])?;
                Ok(vec![Some(g.clone()), Some(db)])
            }),
        ))
    }

    pub fn unary(&mut self, x: Var, op: Unary) -> Result<Var> {
        let out = elementwise::unary(self.gpu, op, self.value(x))?;
        let saved = out.clone();
        Ok(self.push(
            out,
            &[x],
            Box::new(move |gpu, g| {
                Ok(vec![Some(elementwise::unary_backward(gpu, op, g, &saved)?)])
            }),
        ))
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.unary(x, Unary::Relu)
    }

    pub fn tanh(&mut self, x: Var) -> Result<Var> {
        self.unary(x, Unary::Tanh)
    }

    /// Same data, new shape.
    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let original = self.shape(x).to_vec();
        let out = self.value(x).reshape(shape)?;
        Ok(self.push(
            out,
            &[x],
            Box::new(move |_, g| Ok(vec![Some(g.reshape(&original)?)])),
        ))
    }
}
