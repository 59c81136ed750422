//! Runtime edges: no adapter, tensors above the storage binding limit, and
//! dispatch grids above 65,535 workgroups per dimension.

use std::process::Command;

use stptf::check::{assert_close, random_vec, to_f64, Tolerance};
use stptf::gpu::Gpu;
use stptf::ops::{elementwise, matmul};

/// With the Vulkan loader pointed at a driver file that does not exist, the
/// binary must fail cleanly with advice, not panic.
#[test]
fn missing_adapter_is_a_clear_error_not_a_panic() {
    let out = Command::new(env!("CARGO_BIN_EXE_stptf"))
        .arg("info")
        .env("VK_DRIVER_FILES", "/nonexistent/stptf_icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/stptf_icd.json")
        .env("WGPU_BACKEND", "vulkan")
        .output()
        .expect("run stptf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("no usable GPU adapter"), "stderr: {stderr}");
    assert!(stderr.contains("mesa-vulkan-drivers"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn info_names_the_adapter() {
    let out = Command::new(env!("CARGO_BIN_EXE_stptf"))
        .arg("info")
        .output()
        .expect("run stptf");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("adapter") && stdout.contains("max storage buffer binding"),
        "{stdout}"
    );
}

/// A private device with an artificially small binding limit, so the split
/// paths run on small tensors.
fn small_limit_gpu(bytes: u64) -> Gpu {
    let gpu = Gpu::new().expect("GPU adapter (install mesa-vulkan-drivers for lavapipe)");
    gpu.set_poison_new_tensors(true);
    gpu.set_max_binding_bytes(bytes);
    gpu
}

#[test]
fn elementwise_ops_split_tensors_above_the_binding_limit() {
    let gpu = small_limit_gpu(4096); // 1024 floats per binding
    let n = 10_000;
    let a = random_vec(n, 1);
    let b = random_vec(n, 2);
    let ta = gpu.upload(&a, &[n]).unwrap();
    let tb = gpu.upload(&b, &[n]).unwrap();
    let sum = gpu
        .read(&elementwise::add(&gpu, &ta, &tb).unwrap())
        .unwrap();
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| x as f64 + y as f64)
        .collect();
    assert_close(&sum, &want, Tolerance::Elementwise, "split add");
    let c = 37; // bias channel index must follow the global element index
    let bias = random_vec(c, 3);
    let x = random_vec(c * 300, 4);
    let out = elementwise::bias_add(
        &gpu,
        &gpu.upload(&x, &[300, c]).unwrap(),
        &gpu.upload(&bias, &[c]).unwrap(),
    )
    .unwrap();
    let want = elementwise::reference::bias_add(&to_f64(&x), &to_f64(&bias));
    assert_close(
        &gpu.read(&out).unwrap(),
        &want,
        Tolerance::Elementwise,
        "split bias_add",
    );
}

#[test]
fn matmul_splits_batches_and_rows_above_the_binding_limit() {
    let gpu = small_limit_gpu(16 * 1024); // 4096 floats per binding
                                          // Batched: each item fits, the batch does not.
    let (batch, m, k, n) = (9, 30, 20, 17);
    let av = random_vec(batch * m * k, 5);
    let wv = random_vec(k * n, 6);
    let a = gpu.upload(&av, &[batch, m, k]).unwrap();
    let w = gpu.upload(&wv, &[k, n]).unwrap();
    let c = matmul::matmul(&gpu, &a, &w, matmul::Spec::NN).unwrap();
    let want = matmul::reference::matmul(
        &ndarray::Array3::from_shape_vec((batch, m, k), to_f64(&av)).unwrap(),
        &ndarray::Array3::from_shape_vec((1, k, n), to_f64(&wv)).unwrap(),
        matmul::Spec::NN,
    );
    assert_close(
        &gpu.read(&c).unwrap(),
        want.as_slice().unwrap(),
        Tolerance::Accumulation,
        "batch-split matmul",
    );
    // One matrix larger than a binding: split by rows (the GNN's (B·T·N x F)·(F x F)).
    let (m, k, n) = (1000, 16, 16);
    let av = random_vec(m * k, 7);
    let wv = random_vec(k * n, 8);
    let c = matmul::matmul(
        &gpu,
        &gpu.upload(&av, &[m, k]).unwrap(),
        &gpu.upload(&wv, &[k, n]).unwrap(),
        matmul::Spec::NN,
    )
    .unwrap();
    let want = matmul::reference::matmul(
        &ndarray::Array3::from_shape_vec((1, m, k), to_f64(&av)).unwrap(),
        &ndarray::Array3::from_shape_vec((1, k, n), to_f64(&wv)).unwrap(),
        matmul::Spec::NN,
    );
    assert_close(
        &gpu.read(&c).unwrap(),
        want.as_slice().unwrap(),
        Tolerance::Accumulation,
        "row-split matmul",
    );
}

#[test]
fn grids_above_65535_workgroups_are_folded() {
    let gpu = Gpu::new().expect("GPU adapter (install mesa-vulkan-drivers for lavapipe)");
    // 256 threads per workgroup: 65,600 workgroups.
    let n = 65_600 * 256 + 3;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let t = gpu.upload(&x, &[n]).unwrap();
    let y = gpu
        .read(&elementwise::scale(&gpu, &t, 2.0, 1.0).unwrap())
        .unwrap();
    for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
        assert_eq!(b, 2.0 * a + 1.0, "element {i}");
    }
}
