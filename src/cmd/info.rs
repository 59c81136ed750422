//! `stptf info`: the adapter, the limits our kernels care about, optional features.

use anyhow::Context;
use stptf::gpu::Gpu;

pub fn run() -> anyhow::Result<()> {
    let gpu = Gpu::new().context("opening the GPU")?;
    let r = &gpu.report;
    let i = &r.info;
    let l = &r.limits;
    println!("adapter         {}", i.name);
    println!("backend         {:?}", i.backend);
    println!("device type     {:?}", i.device_type);
    println!("driver          {} {}", i.driver, i.driver_info);
    println!("vendor/device   {:#06x}/{:#06x}", i.vendor, i.device);
    let env = stptf::gpu::TILING_ENV;
    let why = if std::env::var_os(env).is_some() {
        format!("set by {env}")
    } else {
        format!("the adapter type's choice; {env} overrides it")
    };
    println!("matmul tiling   {} ({why})", gpu.tiling().name());
    println!();
    println!("limits (as granted to stptf)");
    println!(
        "  max storage buffer binding   {} MiB",
        l.max_storage_buffer_binding_size / (1 << 20)
    );
    println!(
        "  max buffer size              {} MiB",
        l.max_buffer_size / (1 << 20)
    );
    println!(
        "  storage buffers per stage    {}",
        l.max_storage_buffers_per_shader_stage
    );
    println!(
        "  workgroups per dimension     {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "  invocations per workgroup    {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "  workgroup storage            {} KiB",
        l.max_compute_workgroup_storage_size / 1024
    );
    println!(
        "  immediates (push constants)  {} bytes",
        l.max_immediate_size
    );
    println!(
        "  storage offset alignment     {} bytes",
        l.min_storage_buffer_offset_alignment
    );
    println!();
    println!("optional features");
    println!("  timestamp queries  {}", yes_no(r.timestamp_queries));
    println!("  shader f16         {}", yes_no(r.shader_f16));
    println!("  subgroups          {}", yes_no(r.subgroups));
    if r.candidates.len() > 1 {
        println!();
        println!("other adapters seen: {}", r.candidates.join(", "));
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
