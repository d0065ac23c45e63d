//! `client info`: the server's version, backends, security and limits.

use segmenta::service::proto as pb;
use serde_json::json;

fn limits_json(l: &pb::Limits) -> serde_json::Value {
    json!({
        "max_message_bytes": l.max_message_bytes,
        "max_dataset_bytes": l.max_dataset_bytes,
        "max_data_dir_bytes": l.max_data_dir_bytes,
        "max_concurrent_jobs": l.max_concurrent_jobs,
        "max_queued_jobs": l.max_queued_jobs,
        "max_concurrent_requests": l.max_concurrent_requests,
        "max_concurrent_uploads": l.max_concurrent_uploads,
        "max_connections": l.max_connections,
        "max_connections_per_peer": l.max_connections_per_peer,
        "max_streams_per_connection": l.max_streams_per_connection,
        "max_assign_rows": l.max_assign_rows,
        "max_features": l.max_features,
        "max_k": l.max_k,
        "max_iterations": l.max_iterations,
        "max_fit_work": l.max_fit_work,
        "max_silhouette_sample": l.max_silhouette_sample,
        "max_name_bytes": l.max_name_bytes,
        "request_timeout_seconds": l.request_timeout_seconds,
        "idle_timeout_seconds": l.idle_timeout_seconds,
        "handshake_timeout_seconds": l.handshake_timeout_seconds,
        "job_retention_seconds": l.job_retention_seconds,
        "max_retained_jobs": l.max_retained_jobs,
        "max_partition_cache_bytes": l.max_partition_cache_bytes,
        "partition_ttl_seconds": l.partition_ttl_seconds,
    })
}

pub fn json(i: &pb::ServerInfo) -> serde_json::Value {
    json!({
        "version": i.version,
        "backends": i.backends,
        "gpu_adapters": i.gpu_adapters,
        "default_backend": i.default_backend,
        "default_adapter": i.default_adapter,
        "auth_required": i.auth_required,
        "tls": i.tls,
        "client_certificates": i.client_certificates,
        "server_paths": i.server_paths,
        "limits": i.limits.as_ref().map(limits_json),
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A byte count as set: whole binary units when it is one, else the
/// exact count (1,000,000 is not "1 MiB").
fn bytes(n: u64) -> String {
    if n == 0 {
        return "no limit".into();
    }
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{} {name}", n / unit);
        }
    }
    format!(
        "{} bytes",
        segmenta::segmentation::transactions::thousands(n as usize)
    )
}

pub fn text(i: &pb::ServerInfo) -> String {
    let mut out = format!(
        "Segmenta {}\nbackends: {} (default {} [{}])\n",
        i.version,
        i.backends.join(", "),
        i.default_backend,
        i.default_adapter
    );
    if !i.gpu_adapters.is_empty() {
        out.push_str(&format!("GPU adapters: {}\n", i.gpu_adapters.join("; ")));
    }
    out.push_str(&format!(
        "API keys required: {}   TLS: {}   server-side paths: {}\n",
        yes(i.auth_required),
        if i.client_certificates {
            "yes, with client certificates (mutual TLS)"
        } else {
            yes(i.tls)
        },
        yes(i.server_paths)
    ));
    if let Some(l) = &i.limits {
        out.push_str("limits:\n");
        let rows: [(&str, String); 15] = [
            ("message size", bytes(l.max_message_bytes)),
            ("dataset size", bytes(l.max_dataset_bytes)),
            ("data directory", bytes(l.max_data_dir_bytes)),
            (
                "jobs",
                format!(
                    "{} running, {} queued",
                    l.max_concurrent_jobs, l.max_queued_jobs
                ),
            ),
            (
                "requests",
                format!(
                    "{} at once, {} uploads, {} connections ({} per address)",
                    l.max_concurrent_requests,
                    l.max_concurrent_uploads,
                    l.max_connections,
                    l.max_connections_per_peer
                ),
            ),
            ("rows per Assign", l.max_assign_rows.to_string()),
            ("features", l.max_features.to_string()),
            ("k", l.max_k.to_string()),
            ("n_init × max_iter", l.max_iterations.to_string()),
            ("fit work", format!("{:.0e}", l.max_fit_work)),
            ("silhouette sample", l.max_silhouette_sample.to_string()),
            (
                "timeouts",
                format!(
                    "request {} s, idle {} s, handshake {} s",
                    l.request_timeout_seconds, l.idle_timeout_seconds, l.handshake_timeout_seconds
                ),
            ),
            (
                "finished jobs kept",
                format!(
                    "{} h, at most {}",
                    l.job_retention_seconds / 3600.0,
                    l.max_retained_jobs
                ),
            ),
            ("name length", format!("{} bytes", l.max_name_bytes)),
            (
                "partition cache",
                format!(
                    "{}, unused ones kept {} s",
                    bytes(l.max_partition_cache_bytes),
                    l.partition_ttl_seconds
                ),
            ),
        ];
        for (name, value) in rows {
            out.push_str(&format!("  {name:<20} {value}\n"));
        }
    }
    out
}
