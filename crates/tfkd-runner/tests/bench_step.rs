//! `tfkd bench-step` as the device check and the ratio table use it: one
//! JSON line per model with the fields `scripts/bench_steps_torch.py`
//! compares (images/s, memory, the graph's MB and nodes), appended to the
//! file; and clear errors for an unknown model or an empty batch.

use std::process::Command;

fn bench_step(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tfkd")).arg("-q").arg("bench-step").args(args).output().expect("tfkd runs")
}

#[test]
fn bench_step_appends_one_record_per_model() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("steps.jsonl");
    let json_arg = json.to_str().unwrap();
    for models in ["cnn,resnet18", "wrn_16_2"] {
        let out = bench_step(&["--models", models, "--batch", "2", "--classes", "10", "--width-divisor", "8", "--warmup", "0", "--steps", "1", "--json", json_arg]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let models: Vec<&str> = records.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["cnn", "resnet18", "wrn_16_2"], "appended, in order");
    for r in &records {
        let m = r["model"].as_str().unwrap();
        assert_eq!(r["framework"], "tfkd", "{m}");
        assert_eq!(r["device"], "cpu", "{m}");
        assert_eq!((r["batch"].as_u64(), r["classes"].as_u64(), r["width_divisor"].as_u64()), (Some(2), Some(10), Some(8)), "{m}");
        for field in ["median_s", "min_s", "images_per_s", "graph_mb", "peak_rss_mb"] {
            let v = r[field].as_f64().unwrap_or_else(|| panic!("{m}: {field} is {}", r[field]));
            assert!(v > 0.0 && v.is_finite(), "{m}: {field} = {v}");
        }
        assert!(r["graph_nodes"].as_u64().unwrap() > 10, "{m}: a network's graph has its ops");
        // No GPU: the pool's peaks are absent, not zero.
        assert!(r["peak_mb"].is_null() && r["peak_reserved_mb"].is_null(), "{m}");
    }
}

#[test]
fn bench_step_names_bad_arguments() {
    let out = bench_step(&["--models", "resnet19", "--batch", "2", "--steps", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown model `resnet19`") && err.contains("resnet18"), "{err}");
    let out = bench_step(&["--models", "cnn", "--batch", "0", "--steps", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch"));
}
