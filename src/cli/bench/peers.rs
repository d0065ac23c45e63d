//! `--compare`: scikit-learn and FAISS on the identical data (and initial
//! centroids), run by `scripts/bench_peers.py` in the same process tree.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use ndarray::Array2;

use super::measure::Measurement;
use super::workloads::{Task, Workload};

fn write_npy(path: &Path, a: &Array2<f32>) -> anyhow::Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        a.nrows(),
        a.ncols()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(bytemuck::cast_slice(
        a.as_standard_layout().as_slice().expect("contiguous"),
    ))?;
    Ok(())
}

/// The peers' figures on `w` (`iters` Lloyd iterations for k-means).
pub fn compare(w: &Workload, x: &Array2<f32>, iters: usize) -> anyhow::Result<Vec<Measurement>> {
    let dir = tempfile::tempdir()?;
    write_npy(&dir.path().join("x.npy"), x)?;
    let (task, param) = match w.task {
        Task::Lloyd { k } => {
            write_npy(
                &dir.path().join("init.npy"),
                &x.slice(ndarray::s![..k, ..]).to_owned(),
            )?;
            ("lloyd", k)
        }
        Task::Pca { components } => ("pca", components),
        Task::KMeansPlusPlus { k } => ("kmeans++", k),
    };
    // The checkout the binary runs in first (a binary carried to another
    // machine), else the one it was built from.
    let here = std::path::Path::new("scripts/bench_peers.py");
    let script = if here.is_file() {
        here
    } else {
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench_peers.py"
        ))
    };
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .arg(task)
        .arg(param.to_string())
        .arg(iters.to_string())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "scripts/bench_peers.py failed (pip install -r scripts/requirements-bench.txt?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let peers: Vec<(String, String, f64, f64)> = serde_json::from_slice(&out.stdout)?;
    Ok(peers
        .into_iter()
        .map(|(name, adapter, median_ms, min_ms)| Measurement {
            workload: w.id,
            implementation: name,
            adapter,
            unit: w.unit(),
            median_ms,
            min_ms,
            device_median_ms: None,
            gflops: w.flop() / (median_ms * 1e-3) / 1e9,
            peak_fraction: None,
            fma_fraction: None,
            end_to_end_ms: None,
            peak_rss_mib: None,
            init_ms: None,
            init_share: None,
        })
        .collect())
}
