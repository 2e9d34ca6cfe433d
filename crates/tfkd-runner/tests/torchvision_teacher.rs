//! torchvision's published ImageNet weights as a teacher source
//! (`{ torchvision = "resnet50" }`): the config's checks, the download path
//! from the zoo's table against a local HTTP server (no network), and the
//! `tfkd download torchvision` command.

mod common;
#[path = "../../tfkd-data/tests/common/http.rs"]
mod http;

use common::{config_text, tfkd};
use http::Server;
use tfkd_data::download::Silent;
use tfkd_data::DataError;
use tfkd_runner::teacher::torchvision_weights_from;
use tfkd_runner::{ExperimentConfig, RunError};
use tfkd_zoo::pretrained::TorchvisionArch;

/// The digits recipe of `common` with a torchvision teacher, on `dataset`
/// with student `model`.
fn config(strategy: &str, dataset: &str, model: &str) -> Result<ExperimentConfig, RunError> {
    let out = std::env::temp_dir();
    let text = config_text(&out, strategy, 1)
        .replace("dataset = \"digits\"", &format!("dataset = \"{dataset}\""))
        .replace("name = \"cnn\"\n        width_divisor = 4", &format!("name = \"{model}\""));
    ExperimentConfig::from_toml(&text)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const KD: &str = "method = \"kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { source = { torchvision = \"resnet50\" } }";

#[test]
fn config_takes_a_torchvision_source_and_writes_it_back() {
    let c = config(KD, "imagenet", "resnet18_imagenet").unwrap();
    let text = c.to_toml();
    assert!(text.contains("torchvision = \"resnet50\""), "{text}");
    assert_eq!(ExperimentConfig::from_toml(&text).unwrap(), c);
    let strategy = c.strategy.build().unwrap();
    assert_eq!(strategy.teacher().unwrap().model.as_deref(), Some("resnet50_imagenet"));
}

#[test]
fn config_errors_name_the_torchvision_field() {
    let err = |r: Result<ExperimentConfig, RunError>| r.unwrap_err().to_string();
    // An unknown architecture lists the known ones.
    let e = err(config(&KD.replace("resnet50", "resnet34"), "imagenet", "resnet18_imagenet"));
    assert!(e.contains("unknown torchvision architecture `resnet34`") && e.contains("resnext101_32x8d"), "{e}");
    // The published weights classify ImageNet's 1000 classes.
    let e = err(config(KD, "digits", "cnn"));
    assert!(e.starts_with("config field `strategy.teacher.source.torchvision`"), "{e}");
    assert!(e.contains("1000 classes") && e.contains("data.dataset = \"digits\""), "{e}");
    // The teacher is the architecture's network.
    let other = KD.replace("teacher = {", "teacher = { model = \"resnet18_imagenet\",");
    let e = err(config(&other, "imagenet", "resnet18_imagenet"));
    assert!(e.contains("teacher.model = \"resnet18_imagenet\"") && e.contains("resnet50_imagenet"), "{e}");
    // A Tf-KD_self teacher is the student's own architecture.
    let tf_kd_self = "method = \"tf-kd-self\"\nalpha = 0.9\ntemperature = 4.0\nsource = { torchvision = \"resnet18\" }";
    assert!(config(tf_kd_self, "imagenet", "resnet18_imagenet").is_ok());
    let e = err(config(tf_kd_self, "imagenet", "resnet50_imagenet"));
    assert!(e.starts_with("config field `strategy.source.torchvision`") && e.contains("resnet50_imagenet"), "{e}");
}

/// The table's URL and SHA-256 prefix drive the download: a body that does
/// not match the published prefix is refused and deleted, whatever server
/// sent it.
#[test]
fn corrupted_published_file_is_refused_and_deleted() {
    let arch = TorchvisionArch::ResNet18;
    let server = Server::start(b"not resnet18's weights".to_vec(), 2, None);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("hub/checkpoints");
    let e = torchvision_weights_from(arch, &dir, &server.base, &mut Silent).unwrap_err();
    assert_eq!(server.paths(), ["/resnet18-f37072fd.pth"]);
    match &e {
        RunError::Data(d) => match d.as_ref() {
            DataError::HashMismatch { path, expected_prefix, deleted: true, .. } => {
                assert_eq!(path, &dir.join("resnet18-f37072fd.pth"));
                assert_eq!(expected_prefix, "f37072fd");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("resnet18-f37072fd.pth") && msg.contains("f37072fd") && msg.contains("deleted"), "{msg}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing is left in the cache");
}

#[test]
fn download_command_names_the_arch_and_the_root() {
    let out = tfkd().args(["-q", "download", "torchvision", "resnet34"]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("resnet34") && err.contains("densenet121"), "{err}");
    // --root that is a file: named before any network access.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = tfkd().args(["-q", "download", "torchvision", "densenet121", "--root"]).arg(&file).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains(&file.display().to_string()) && err.contains("not a directory"), "{err}");
    // The dataset form is unchanged.
    let out = tfkd().args(["-q", "download", "cifar10", "--root"]).arg(&file).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

/// ImageNet class folders with `classes` classes of one 16×16 PPM image in
/// `train/` and `val/`.
fn small_imagenet(root: &std::path::Path, classes: usize) {
    for split in ["train", "val"] {
        for c in 0..classes {
            let dir = root.join(split).join(format!("n{c:08}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut ppm = b"P6\n16 16\n255\n".to_vec();
            ppm.extend((0..16 * 16 * 3).map(|i| ((i * 7 + c * 31) % 256) as u8));
            std::fs::write(dir.join("a.ppm"), ppm).unwrap();
        }
    }
}

/// A published teacher needs ImageNet's 1000 classes: data with fewer is a
/// named error before anything is downloaded or trained.
#[test]
fn a_published_teacher_on_data_without_imagenets_classes_is_a_named_error() {
    let data = tempfile::tempdir().unwrap();
    small_imagenet(data.path(), 2);
    let out = tempfile::tempdir().unwrap();
    let tf_kd_self = "method = \"tf-kd-self\"\nalpha = 0.9\ntemperature = 4.0\nsource = { torchvision = \"resnet18\" }";
    let mut c = config(tf_kd_self, "imagenet", "resnet18_imagenet").unwrap();
    c.data.root = data.path().to_path_buf();
    c.data.train_subset = 0;
    c.out_dir = out.path().to_path_buf();
    let e = tfkd_runner::run_experiment(&c, &tfkd_runner::RunOptions::default(), &mut tfkd_runner::Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("strategy.teacher.source.torchvision") && e.contains("1000") && e.contains("has 2"), "{e}");
}
