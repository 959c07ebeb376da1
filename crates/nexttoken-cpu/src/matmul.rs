//! Matrix products on the calling thread: a task's share of a prompt's products, and
//! attention's blocks of queries. Float32 through `gemm` (burn-flex's own matrix engine); bf16
//! pairs through our own kernel where the CPU multiplies them (AVX-512 BF16), since `gemm` has
//! only float32 and multiplied widened copies.

use half::bf16;

#[cfg(target_arch = "x86_64")]
use crate::arch::x86;

/// How [`matmul`]'s right-hand matrix lies in memory.
#[derive(Clone, Copy, Debug)]
pub enum Rhs {
    /// `[k, n]`, row-major.
    AsIs,
    /// `[n, k]`, row-major: the matrix's transpose.
    Transposed,
}

/// `out = a · b` for row-major `a: [m, k]` and `b` (see [`Rhs`]), on the calling thread.
///
/// # Panics
/// If the slices' lengths are not those of the shapes.
pub fn matmul(out: &mut [f32], a: &[f32], b: &[f32], [m, k, n]: [usize; 3], rhs: Rhs) {
    assert_eq!(out.len(), m * n);
    // SAFETY: `out` holds `[m, n]` values (asserted), borrowed mutably for the call.
    unsafe { matmul_into(out.as_mut_ptr(), n, a, b, [m, k, n], rhs) }
}

/// [`matmul`] into `m` rows of `n` values `row_stride` apart from `out`.
///
/// # Safety
/// Those values are writable, and nothing else reads or writes them during the call.
pub(crate) unsafe fn matmul_into(
    out: *mut f32,
    row_stride: usize,
    a: &[f32],
    b: &[f32],
    [m, k, n]: [usize; 3],
    rhs: Rhs,
) {
    assert!(a.len() == m * k && b.len() == k * n && row_stride >= n);
    let (b_column_stride, b_row_stride) = match rhs {
        Rhs::AsIs => (1, n),
        Rhs::Transposed => (k, 1),
    };
    // SAFETY: `a` and `b` hold `[m, k]` and `[k, n]` values (asserted), which these strides
    // address within them; `out`'s are the caller's promise. `read_dst` is false, so `out`'s
    // old values are not read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            row_stride as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_column_stride as isize,
            b_row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Whether [`bf16_products`] runs on this CPU.
pub fn has_bf16_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::has_avx512_bf16();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out[i, j] = x[i, :] · rows[j, :]` for `x: [m, k]` and `rows: [n, k]`, the bf16s multiplied
/// in pairs by the CPU and summed in float32 (see `arch/x86/avx512_bf16.rs`).
///
/// # Safety
/// [`has_bf16_products`]; `m` rows of `n` values `row_stride` apart from `out` are writable,
/// and nothing else reads or writes them during the call.
pub(crate) unsafe fn bf16_products(
    out: *mut f32,
    row_stride: usize,
    x: &[bf16],
    rows: &[bf16],
    dims: [usize; 3],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's promises.
    unsafe {
        x86::avx512_bf16::products(out, row_stride, x, rows, dims)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out, row_stride, x, rows, dims);
        unreachable!("`has_bf16_products` is false off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::tests::values;
    use crate::times_transposed;

    #[test]
    fn products_match_the_reference_either_way_round() {
        // Tiny, then a prompt chunk at GPT-2 small's width with odd tails everywhere.
        for shape in [[5, 7, 3], [37, 768 + 3, 67]] {
            check_either_way_round(shape);
        }
    }

    fn check_either_way_round([m, k, n]: [usize; 3]) {
        let (a, b) = (values::<f32>(m * k, 37), values::<f32>(k * n, 53));
        let transposed: Vec<f32> = (0..n)
            .flat_map(|j| b.iter().skip(j).step_by(n).copied())
            .collect();
        for (rhs, b) in [(Rhs::AsIs, &b), (Rhs::Transposed, &transposed)] {
            let mut out = vec![f32::NAN; m * n];
            matmul(&mut out, &a, b, [m, k, n], rhs);
            for (index, ours) in out.iter().enumerate() {
                let (i, j) = (index / n, index % n);
                let exact: f64 = (0..k)
                    .map(|p| f64::from(a[i * k + p]) * f64::from(b_at(b, rhs, [k, n], p, j)))
                    .sum();
                assert!(
                    (f64::from(*ours) - exact).abs() < 1e-4 * exact.abs().max(1.0),
                    "{rhs:?}, {m}×{k}×{n} [{i}, {j}]: {ours} vs {exact}"
                );
            }
        }
    }

    fn b_at(b: &[f32], rhs: Rhs, [k, n]: [usize; 2], p: usize, j: usize) -> f32 {
        match rhs {
            Rhs::AsIs => b[p * n + j],
            Rhs::Transposed => b[j * k + p],
        }
    }

    type Products = fn(&[bf16], &[bf16], [usize; 3]) -> Vec<f32>;

    /// A prompt's bf16 products, by the bf16 kernel where the CPU has AVX-512 BF16 (`gemm` on
    /// widened copies elsewhere).
    #[test]
    fn bf16_prompt_products_are_float32_sums_of_exact_products() {
        check_bf16_products(times_transposed);
    }

    /// The AVX-512 BF16 kernel itself.
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 BF16 CPU: cargo test -- --ignored avx512_bf16 (cargo xtask test runs it there)"]
    fn avx512_bf16_products_are_float32_sums_of_exact_products() {
        assert!(has_bf16_products(), "this CPU has no AVX-512 BF16");
        check_bf16_products(|x, w, [m, k, n]| {
            let mut out = vec![f32::NAN; m * n];
            // SAFETY: the CPU has the instructions (asserted above); `out` holds `m` rows of
            // `n` values, `n` apart, and nothing else touches it.
            unsafe { bf16_products(out.as_mut_ptr(), n, x, w, [m, k, n]) };
            out
        });
    }

    /// Tiles of 8 rows and single rows, strips of 32 weight rows and a partial one, inputs over
    /// three packed strips with an odd tail; then a prompt chunk at GPT-2 small's width.
    fn check_bf16_products(products: Products) {
        for shape in [[29, 2 * 256 + 45, 37], [17, 768, 64 + 5]] {
            check_bf16_shape(products, shape);
        }
    }

    fn check_bf16_shape(products: Products, [m, k, n]: [usize; 3]) {
        let (x, w) = (values::<bf16>(m * k, 37), values::<bf16>(n * k, 53));
        let out = products(&x, &w, [m, k, n]);
        for (i, out) in out.chunks_exact(n).enumerate() {
            for (j, &ours) in out.iter().enumerate() {
                let products = x[i * k..][..k]
                    .iter()
                    .zip(&w[j * k..][..k])
                    .map(|(x, w)| f64::from(x.to_f32()) * f64::from(w.to_f32()));
                let (exact, magnitude) =
                    products.fold((0.0, 0.0), |(sum, size), p| (sum + p, size + p.abs()));
                // Float32 sums of `k` exact products, in any order.
                let bound = k as f64 * f64::from(f32::EPSILON) * magnitude;
                assert!(
                    (f64::from(ours) - exact).abs() <= bound,
                    "[{i}, {j}]: {ours} vs {exact} (bound {bound})"
                );
            }
        }
    }
}
