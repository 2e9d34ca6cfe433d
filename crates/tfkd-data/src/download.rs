//! Downloads of the official archives (CIFAR-10, CIFAR-100, Tiny-ImageNet): streamed to a
//! `.part` file with progress reports, checked against the published MD5, and extracted
//! atomically: into a private staging folder that is renamed into place only when complete,
//! so a half-extracted dataset is never taken as complete.
//!
//! Single files published with the first hex digits of their SHA-256 (torch.hub's convention,
//! e.g. torchvision's weights) go through [`ensure_file`]: a download is verified before it
//! takes its name, and deleted when it does not match.
//!
//! Without a network the error names the URL and where to put the file by hand; a valid
//! file found there is verified (and extracted) without any network access.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use md5::{Digest, Md5};
use sha2::Sha256;

use crate::error::{DataError, Result};

/// Progress callbacks (the CLI draws bars with them; the library prints nothing).
pub trait Reporter {
    /// A transfer or check of `total` bytes (when known) starts; `what` describes it.
    fn start(&mut self, what: &str, total: Option<u64>);
    /// `done` bytes of the current step are finished.
    fn progress(&mut self, done: u64);
    /// The current step is finished.
    fn finish(&mut self);
}

/// A [`Reporter`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {
    fn start(&mut self, _: &str, _: Option<u64>) {}
    fn progress(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// The archive format of a [`Remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// `.tar.gz`.
    TarGz,
    /// `.zip`.
    Zip,
}

/// One downloadable dataset archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Short name ("cifar10", ...).
    pub name: String,
    /// Where to fetch it.
    pub url: String,
    /// The archive's file name (kept in the destination folder).
    pub file_name: String,
    /// The published MD5, lower-case hex.
    pub md5: String,
    /// tar.gz or zip.
    pub kind: ArchiveKind,
    /// The top-level folder the archive extracts to (the dataset folder).
    pub folder: String,
}

impl Remote {
    /// CIFAR-10 binary version (162 MB).
    pub fn cifar10() -> Self {
        Remote {
            name: "cifar10".into(),
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz".into(),
            file_name: "cifar-10-binary.tar.gz".into(),
            md5: "c32a1d4ab5d03f1284b67883e8d87530".into(),
            kind: ArchiveKind::TarGz,
            folder: "cifar-10-batches-bin".into(),
        }
    }
    /// CIFAR-100 binary version (161 MB).
    pub fn cifar100() -> Self {
        Remote {
            name: "cifar100".into(),
            url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz".into(),
            file_name: "cifar-100-binary.tar.gz".into(),
            md5: "03b5dce01913d631647c71ecec9e9cb8".into(),
            kind: ArchiveKind::TarGz,
            folder: "cifar-100-binary".into(),
        }
    }
    /// Tiny-ImageNet-200 (237 MB zip, Stanford CS231N).
    pub fn tiny_imagenet() -> Self {
        Remote {
            name: "tiny-imagenet".into(),
            url: "http://cs231n.stanford.edu/tiny-imagenet-200.zip".into(),
            file_name: "tiny-imagenet-200.zip".into(),
            md5: "90528d7ca1a48142e341f4ef8d21d0de".into(),
            kind: ArchiveKind::Zip,
            folder: "tiny-imagenet-200".into(),
        }
    }
    /// The remote for a short name: `cifar10`, `cifar100`, `tiny-imagenet`.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "cifar10" | "cifar-10" => Some(Self::cifar10()),
            "cifar100" | "cifar-100" => Some(Self::cifar100()),
            "tiny-imagenet" | "tiny_imagenet" | "tiny-imagenet-200" => Some(Self::tiny_imagenet()),
            _ => None,
        }
    }
}

/// The marker written inside a dataset folder once extraction completed.
pub const COMPLETE_MARKER: &str = ".tfkd-complete";

/// The dataset folder of `remote` under `root` when it is completely extracted.
pub fn complete_folder(remote: &Remote, root: &Path) -> Option<PathBuf> {
    let dir = root.join(&remote.folder);
    dir.join(COMPLETE_MARKER).is_file().then_some(dir)
}

/// MD5 of a file, lower-case hex.
pub fn md5_file(path: &Path, reporter: &mut dyn Reporter) -> Result<String> {
    hash_file::<Md5>(path, reporter)
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path, reporter: &mut dyn Reporter) -> Result<String> {
    hash_file::<Sha256>(path, reporter)
}

/// The digest `D` of a file, lower-case hex, reported as "verifying <path>".
fn hash_file<D: Digest>(path: &Path, reporter: &mut dyn Reporter) -> Result<String> {
    let f = File::open(path).map_err(|e| DataError::io("opening", path, e))?;
    let total = f.metadata().ok().map(|m| m.len());
    reporter.start(&format!("verifying {}", path.display()), total);
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| DataError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        reporter.progress(done);
    }
    reporter.finish();
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes sure `remote` is extracted under `root` and returns its dataset folder.
///
/// 1. If `root/<folder>/` carries the completion marker: done.
/// 2. If `root/<file_name>` exists (downloaded earlier or put there by hand), it is used;
///    otherwise it is downloaded from `remote.url` to `<file_name>.part` and renamed.
/// 3. Its MD5 must equal the published one (a mismatching archive is left in place, named
///    in the error).
/// 4. It is extracted into `root/.tfkd-extract-<folder>/`, the marker is written, and the
///    folder is renamed to `root/<folder>/`.
pub fn ensure(remote: &Remote, root: &Path, reporter: &mut dyn Reporter) -> Result<PathBuf> {
    if let Some(dir) = complete_folder(remote, root) {
        return Ok(dir);
    }
    create_root(root)?;
    let archive = root.join(&remote.file_name);
    if !archive.is_file() {
        fetch(&remote.url, &archive, reporter)?;
    }
    let found = md5_file(&archive, reporter)?;
    if found != remote.md5 {
        return Err(DataError::ChecksumMismatch { path: archive, expected: remote.md5.clone(), found });
    }
    extract_atomically(remote, &archive, root, reporter)
}

/// Creates the download root (and its parents). A root, or an ancestor of it, that exists but
/// is not a folder is [`DataError::NotADirectory`] naming it, instead of the OS's bare
/// "File exists" / "Not a directory".
fn create_root(root: &Path) -> Result<()> {
    if let Some(existing) = root.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists()) {
        if !existing.is_dir() {
            let hint = if existing == root {
                "; the download root must be a folder (it is created when missing)".to_string()
            } else {
                format!("; it is a parent of the download root {}", root.display())
            };
            return Err(DataError::NotADirectory { path: existing.into(), hint });
        }
    }
    std::fs::create_dir_all(root).map_err(|e| DataError::io("creating", root, e))
}

/// Makes sure `dest` holds the file published at `url` whose SHA-256 starts with
/// `sha256_prefix` (lower-case hex: torch.hub's `check_hash`, the digits in a published
/// file's name), and returns `dest`.
///
/// 1. If `dest` exists (downloaded earlier, by PyTorch, or put there by hand), its SHA-256 is
///    checked; it is not downloaded again. One that does not match is left in place and is
///    [`DataError::HashMismatch`] naming it.
/// 2. Otherwise `url` is downloaded to a `.part` file of this process beside `dest` (its
///    folder is created), verified, and renamed to `dest` only when it matches, so `dest`
///    never holds an unverified file. A download that does not match is deleted and is
///    [`DataError::HashMismatch`].
///
/// An empty prefix, or one that is not lower-case hex of at most 64 digits, is
/// [`DataError::InvalidConfig`]: it would verify nothing.
pub fn ensure_file(url: &str, dest: &Path, sha256_prefix: &str, reporter: &mut dyn Reporter) -> Result<PathBuf> {
    if sha256_prefix.is_empty()
        || sha256_prefix.len() > 64
        || !sha256_prefix.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(DataError::InvalidConfig {
            what: "SHA-256 prefix",
            message: format!("{sha256_prefix:?} for {} is not 1 to 64 lower-case hex digits", dest.display()),
        });
    }
    let mismatch = |path: &Path, found: String, deleted: bool| DataError::HashMismatch {
        path: path.into(),
        expected_prefix: sha256_prefix.into(),
        found,
        deleted,
    };
    if dest.is_file() {
        let found = sha256_file(dest, reporter)?;
        return if found.starts_with(sha256_prefix) { Ok(dest.into()) } else { Err(mismatch(dest, found, false)) };
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_root(parent)?;
    }
    // Per process: concurrent processes (the ranks of one run) each download their own copy,
    // and the renames of identical verified files are atomic.
    let part = sibling(dest, &format!(".{}.part", std::process::id()));
    let verified = download(url, &part, dest, reporter).and_then(|()| sha256_file(&part, reporter));
    match verified {
        Ok(found) if found.starts_with(sha256_prefix) => {
            std::fs::rename(&part, dest).map_err(|e| DataError::io("renaming", &part, e))?;
            Ok(dest.into())
        }
        Ok(found) => {
            std::fs::remove_file(&part).map_err(|e| DataError::io("removing", &part, e))?;
            Err(mismatch(dest, found, true))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    path.with_file_name(format!(
        "{}{suffix}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ))
}

/// Downloads `url` to `dest` through `dest.part` (renamed only once complete).
pub fn fetch(url: &str, dest: &Path, reporter: &mut dyn Reporter) -> Result<()> {
    let part = sibling(dest, ".part");
    download(url, &part, dest, reporter)?;
    std::fs::rename(&part, dest).map_err(|e| DataError::io("renaming", &part, e))
}

/// Streams `url` into `part` (fsynced, complete when it returns `Ok`); errors name `dest`,
/// where the file goes.
fn download(url: &str, part: &Path, dest: &Path, reporter: &mut dyn Reporter) -> Result<()> {
    let fail = |message: String| DataError::Download { url: url.into(), dest: dest.into(), message };
    let resp = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let total = resp.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
    let mut body = resp.into_reader();
    let mut out = File::create(part).map_err(|e| DataError::io("creating", part, e))?;
    reporter.start(&format!("downloading {url}"), total);
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| fail(format!("after {done} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| DataError::io("writing", part, e))?;
        done += n as u64;
        reporter.progress(done);
    }
    reporter.finish();
    if let Some(t) = total {
        if t != done {
            return Err(fail(format!("connection closed after {done} of {t} bytes")));
        }
    }
    out.sync_all().map_err(|e| DataError::io("writing", part, e))
}

/// A relative path with no `..`, root or prefix component (so it cannot leave the staging folder).
fn safe_relative(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn extract_atomically(remote: &Remote, archive: &Path, root: &Path, reporter: &mut dyn Reporter) -> Result<PathBuf> {
    let staging = root.join(format!(".tfkd-extract-{}", remote.folder));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| DataError::io("removing", &staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| DataError::io("creating", &staging, e))?;
    let bad = |message: String| DataError::Archive { path: archive.into(), message };
    reporter.start(&format!("extracting {}", archive.display()), None);
    match remote.kind {
        ArchiveKind::TarGz => {
            let f = File::open(archive).map_err(|e| DataError::io("opening", archive, e))?;
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
            let entries = tar.entries().map_err(|e| bad(e.to_string()))?;
            for (k, entry) in entries.enumerate() {
                let mut entry = entry.map_err(|e| bad(format!("entry {k}: {e}")))?;
                let path = entry.path().map_err(|e| bad(format!("entry {k}: {e}")))?.into_owned();
                if !safe_relative(&path) {
                    return Err(bad(format!("entry {} escapes the destination", path.display())));
                }
                entry.unpack_in(&staging).map_err(|e| bad(format!("entry {}: {e}", path.display())))?;
                reporter.progress(k as u64 + 1);
            }
        }
        ArchiveKind::Zip => {
            let f = File::open(archive).map_err(|e| DataError::io("opening", archive, e))?;
            let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| bad(e.to_string()))?;
            for k in 0..zip.len() {
                let mut file = zip.by_index(k).map_err(|e| bad(format!("entry {k}: {e}")))?;
                let rel = file.enclosed_name().ok_or_else(|| bad(format!("entry {k} escapes the destination")))?;
                let out = staging.join(&rel);
                if file.is_dir() {
                    std::fs::create_dir_all(&out).map_err(|e| DataError::io("creating", &out, e))?;
                } else {
                    if let Some(parent) = out.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| DataError::io("creating", parent, e))?;
                    }
                    let mut w = File::create(&out).map_err(|e| DataError::io("creating", &out, e))?;
                    std::io::copy(&mut file, &mut w).map_err(|e| bad(format!("entry {}: {e}", rel.display())))?;
                }
                reporter.progress(k as u64 + 1);
            }
        }
    }
    reporter.finish();
    let extracted = staging.join(&remote.folder);
    if !extracted.is_dir() {
        return Err(bad(format!("no top-level folder {} in the archive", remote.folder)));
    }
    let marker = extracted.join(COMPLETE_MARKER);
    std::fs::write(&marker, format!("{}\n", remote.md5)).map_err(|e| DataError::io("writing", &marker, e))?;
    let dest = root.join(&remote.folder);
    if dest.exists() {
        // An incomplete earlier extraction (no marker): replace it.
        std::fs::remove_dir_all(&dest).map_err(|e| DataError::io("removing", &dest, e))?;
    }
    std::fs::rename(&extracted, &dest).map_err(|e| DataError::io("renaming", &extracted, e))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(dest)
}
