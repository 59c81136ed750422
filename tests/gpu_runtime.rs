//! Runtime edges: no adapter, tensors above the storage binding limit, and
//! dispatch grids above 65,535 workgroups per dimension.

use std::process::Command;

use stptf::check::{
    assert_close, dispatches, gpu, gpu_with_binding_limit, random_vec, to_f64, Tolerance,
};
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

/// `WGPU_BACKEND=gl` names the problem instead of giving driver install advice.
#[test]
fn an_opengl_backend_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_stptf"))
        .arg("info")
        .env("WGPU_BACKEND", "gl")
        .output()
        .expect("run stptf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("OpenGL is not supported; use vulkan, metal or dx12"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("mesa-vulkan-drivers"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// `STPTF_TILING` picks the kernels' tiling for a run; a value that is not
/// one of the two is refused by name, and `info` says which one is in use.
#[test]
fn the_tiling_variable_acts_or_is_refused_by_name() {
    let info = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_stptf"))
            .arg("info")
            .env("STPTF_TILING", value)
            .output()
            .expect("run stptf")
    };
    let out = info("shared");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("STPTF_TILING=\"shared\": expected `registers` or `workgroup`"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    for value in ["registers", "workgroup"] {
        let out = info(value);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("matmul tiling   {value} (set by STPTF_TILING)")),
            "{value}: {stdout}"
        );
    }
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

#[test]
fn elementwise_ops_split_tensors_above_the_binding_limit() {
    let gpu = gpu_with_binding_limit(4096); // 1024 floats per binding
    let n = 10_000;
    let a = random_vec(n, 1);
    let b = random_vec(n, 2);
    let ta = gpu.upload(&a, &[n]).unwrap();
    let tb = gpu.upload(&b, &[n]).unwrap();
    let (sum, trace) = gpu.traced(|| elementwise::add(gpu, &ta, &tb).unwrap());
    assert_eq!(
        dispatches(&trace, "elementwise::add").len(),
        10,
        "10,000 values in 1,024-value bindings"
    );
    let sum = gpu.read(&sum).unwrap();
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| x as f64 + y as f64)
        .collect();
    assert_close(&sum, &want, Tolerance::ELEMENTWISE, "split add");
    let c = 37; // bias channel index must follow the global element index
    let bias = random_vec(c, 3);
    let x = random_vec(c * 300, 4);
    let (tx, tbias) = (
        gpu.upload(&x, &[300, c]).unwrap(),
        gpu.upload(&bias, &[c]).unwrap(),
    );
    let (out, trace) = gpu.traced(|| elementwise::bias_add(gpu, &tx, &tbias).unwrap());
    assert_eq!(
        dispatches(&trace, "elementwise::bias_add").len(),
        11,
        "11,100 values in 1,024-value bindings"
    );
    let want = elementwise::reference::bias_add(&to_f64(&x), &to_f64(&bias));
    assert_close(
        &gpu.read(&out).unwrap(),
        &want,
        Tolerance::ELEMENTWISE,
        "split bias_add",
    );
}

#[test]
fn matmul_splits_batches_and_rows_above_the_binding_limit() {
    let gpu = gpu_with_binding_limit(16 * 1024); // 4096 floats per binding
                                                 // Batched: each item fits, the batch does not.
    let (batch, m, k, n) = (9, 30, 20, 17);
    let av = random_vec(batch * m * k, 5);
    let wv = random_vec(k * n, 6);
    let a = gpu.upload(&av, &[batch, m, k]).unwrap();
    let w = gpu.upload(&wv, &[k, n]).unwrap();
    let (c, trace) = gpu.traced(|| matmul::matmul(gpu, &a, &w, matmul::Spec::NN).unwrap());
    // 600 values of A per item, 4096 - 63 of room: 6 items, then 3.
    let grids = dispatches(&trace, "matmul::matmul");
    assert_eq!(
        grids.iter().map(|g| g[2]).collect::<Vec<_>>(),
        [6, 3],
        "{grids:?}"
    );
    let want = matmul::reference::matmul(
        &ndarray::Array3::from_shape_vec((batch, m, k), to_f64(&av)).unwrap(),
        &ndarray::Array3::from_shape_vec((1, k, n), to_f64(&wv)).unwrap(),
        matmul::Spec::NN,
    );
    assert_close(
        &gpu.read(&c).unwrap(),
        want.as_slice().unwrap(),
        Tolerance::ACCUMULATION,
        "batch-split matmul",
    );
    // One matrix larger than a binding: split by rows (the GNN's (B·T·N x F)·(F x F)).
    let (m, k, n) = (1000, 16, 16);
    let av = random_vec(m * k, 7);
    let wv = random_vec(k * n, 8);
    let (ta, tw) = (
        gpu.upload(&av, &[m, k]).unwrap(),
        gpu.upload(&wv, &[k, n]).unwrap(),
    );
    let (c, trace) = gpu.traced(|| matmul::matmul(gpu, &ta, &tw, matmul::Spec::NN).unwrap());
    // 16 values per row, 4033 of room: 252 rows a launch, four launches.
    let grids = dispatches(&trace, "matmul::matmul_nn_vec4");
    assert_eq!(grids.len(), 4, "{grids:?}");
    let want = matmul::reference::matmul(
        &ndarray::Array3::from_shape_vec((1, m, k), to_f64(&av)).unwrap(),
        &ndarray::Array3::from_shape_vec((1, k, n), to_f64(&wv)).unwrap(),
        matmul::Spec::NN,
    );
    assert_close(
        &gpu.read(&c).unwrap(),
        want.as_slice().unwrap(),
        Tolerance::ACCUMULATION,
        "row-split matmul",
    );
}

/// The runtime's fill runs one element per invocation in 256-invocation
/// workgroups, so 65,600 x 256 values need 65,600 workgroups: more than one
/// grid dimension holds, so the grid must be folded into two.
#[test]
fn grids_above_65535_workgroups_are_folded() {
    let gpu = gpu();
    let n = 65_600 * 256 + 3;
    let (t, trace) = gpu.traced(|| gpu.full(&[n], 2.5).unwrap());
    let grids = dispatches(&trace, "fill::fill");
    assert_eq!(grids.len(), 1, "one launch: {grids:?}");
    let [x, y, z] = grids[0];
    assert!(y > 1 && x <= 65_535 && z == 1, "not folded: {grids:?}");
    assert!(
        x as u64 * y as u64 >= 65_601,
        "covers every workgroup: {grids:?}"
    );
    let v = gpu.read(&t).unwrap();
    if let Some(i) = v.iter().position(|&e| e != 2.5) {
        panic!(
            "element {i} is {}, not 2.5: a folded workgroup missed it",
            v[i]
        );
    }
}
