//! The o200k vocabulary, offline.
//!
//! openai-harmony reads `o200k_base.tiktoken` from `$TIKTOKEN_ENCODINGS_BASE` (and would
//! download it otherwise). tiktoken-rs embeds the same ranks, so we write the file from it
//! once into a cache directory — `base64(bytes) + " " + rank` per line, which reproduces the
//! published file byte for byte — and point openai-harmony at it. The proxy never touches
//! the network for its vocabulary.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use openai_harmony::{HarmonyEncoding, HarmonyEncodingName};
use sha2::Digest as _;

const FILE_NAME: &str = "o200k_base.tiktoken";
const SHA256: &str = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d";
/// o200k_base has ranks 0..199998; the rest of o200k_harmony are special tokens.
const N_RANKS: u32 = 199_998;

#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("cannot write the vocabulary to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("tiktoken-rs has no bytes for rank {0}")]
    MissingRank(u32),
    #[error("the materialised vocabulary does not have the expected sha256")]
    Hash,
    #[error("openai-harmony could not load the encoding: {0}")]
    Load(String),
    #[error("unknown Harmony encoding {0:?} (known: HarmonyGptOss)")]
    UnknownEncoding(String),
}

/// Where the vocabulary is cached: `$HARMONY_PROXY_CACHE`, else `$XDG_CACHE_HOME/harmony-proxy`,
/// else `~/.cache/harmony-proxy`, else the system temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HARMONY_PROXY_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("harmony-proxy");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("harmony-proxy");
    }
    std::env::temp_dir().join("harmony-proxy")
}

/// Writes `o200k_base.tiktoken` into `dir` unless a correct copy is already there.
pub fn materialise(dir: &Path) -> Result<PathBuf, VocabError> {
    let path = dir.join(FILE_NAME);
    if let Ok(existing) = std::fs::read(&path) {
        if hex(&sha2::Sha256::digest(&existing)) == SHA256 {
            return Ok(path);
        }
    }
    let bpe = tiktoken_rs::o200k_base_singleton();
    let mut buf = Vec::with_capacity(3_700_000);
    let b64 = base64::engine::general_purpose::STANDARD;
    for rank in 0..N_RANKS {
        let bytes = bpe.decode_bytes(&[rank]).map_err(|_| VocabError::MissingRank(rank))?;
        buf.extend_from_slice(b64.encode(&bytes).as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(rank.to_string().as_bytes());
        buf.push(b'\n');
    }
    if hex(&sha2::Sha256::digest(&buf)) != SHA256 {
        return Err(VocabError::Hash);
    }
    let werr = |source| VocabError::Write { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(werr)?;
    // Write then rename, so a concurrent start never reads half a file.
    let tmp = dir.join(format!("{FILE_NAME}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(werr)?;
    f.write_all(&buf).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, &path).map_err(werr)?;
    Ok(path)
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

static ENCODING: OnceLock<Result<HarmonyEncoding, String>> = OnceLock::new();

/// Materialise the vocabulary, point openai-harmony at it and load the encoding, once per
/// process. Call it before other threads start: it sets `TIKTOKEN_ENCODINGS_BASE`.
pub fn init(cache_dir: &Path) -> Result<HarmonyEncoding, VocabError> {
    ENCODING
        .get_or_init(|| {
            materialise(cache_dir).map_err(|e| e.to_string())?;
            // SAFETY-ish: the environment is written before any thread that reads it exists
            // (callers run this at start-up, before the runtime; tests serialise on the OnceLock).
            std::env::set_var("TIKTOKEN_ENCODINGS_BASE", cache_dir);
            openai_harmony::load_harmony_encoding(HarmonyEncodingName::HarmonyGptOss).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(VocabError::Load)
}

/// The encoding loaded by [`init`] (initialising with the default cache dir if needed).
pub fn encoding() -> Result<HarmonyEncoding, VocabError> {
    init(&default_cache_dir())
}

/// Checks an encoding name from the config.
pub fn check_encoding_name(name: &str) -> Result<(), VocabError> {
    name.parse::<HarmonyEncodingName>().map(|_| ()).map_err(|_| VocabError::UnknownEncoding(name.to_owned()))
}
