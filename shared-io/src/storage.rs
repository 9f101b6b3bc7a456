//! Where the lake and the batch views live: a local directory, or an S3 prefix when `LAKE_DIR`
//! is `s3://bucket/prefix` (credentials, region and endpoint from the standard `AWS_*`
//! variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, ...).
//!
//! Publishing is atomic in both: a reader sees a whole file or none. Locally a file is written
//! under a temporary name, synced, renamed and its directory synced; on S3 it is one PUT, which
//! is all-or-nothing, under a key nobody else writes. Either way a file counts only once
//! Postgres lists it (`lake_files`, `batch_versions`), so a crash before that leaves garbage
//! nobody reads, never a torn file.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The scheme of an S3 `LAKE_DIR`.
const S3_SCHEME: &str = "s3://";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("LAKE_DIR `{0}`: an S3 location is s3://bucket or s3://bucket/prefix")]
    Location(String),
    #[error("could not configure the S3 store of bucket {bucket}: {source}")]
    ConfigureS3 {
        bucket: String,
        source: Box<object_store::Error>,
    },
    #[error("lake path {path} is not a valid object key: {source}")]
    InvalidKey {
        path: String,
        source: Box<object_store::path::Error>,
    },
    #[error("could not publish lake file {path}: {source}")]
    Publish { path: String, source: Cause },
    #[error("could not read lake file {path}: {source}")]
    Read { path: String, source: Cause },
    #[error("could not check whether lake file {path} exists: {source}")]
    CheckExists { path: String, source: Cause },
    #[error("could not list the directories under {path} in the lake: {source}")]
    ListDirs { path: String, source: Cause },
    #[error("could not remove lake directory {path}: {source}")]
    RemoveDir { path: String, source: Cause },
    #[error("could not list the files of lake directory {path}: {source}")]
    ListFiles { path: String, source: Cause },
    #[error("could not remove lake file {path}: {source}")]
    RemoveFile { path: String, source: Cause },
    #[error("a lake task stopped before it finished: {0}")]
    RunBlocking(#[source] tokio::task::JoinError),
}

/// What the disk or the object store said: the operation is the variant around it.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl StorageError {
    fn publish(path: impl std::fmt::Display, source: impl Into<Cause>) -> StorageError {
        StorageError::Publish {
            path: path.to_string(),
            source: source.into(),
        }
    }
}

/// The lake's root. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Lake {
    Local(PathBuf),
    S3 {
        /// `s3://bucket`, the URL the store is registered under in DataFusion.
        url: String,
        /// Key prefix of everything, without a trailing `/`; empty for the bucket's root.
        prefix: String,
        store: Arc<dyn ObjectStore>,
    },
}

impl Lake {
    /// The lake `LAKE_DIR` names.
    pub fn open(lake_dir: &Path) -> Result<Lake, StorageError> {
        let text = lake_dir.to_string_lossy();
        let Some(rest) = text.strip_prefix(S3_SCHEME) else {
            return Ok(Lake::Local(lake_dir.to_path_buf()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::Location(text.into_owned()));
        }
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| StorageError::ConfigureS3 {
                bucket: bucket.to_string(),
                source: Box::new(source),
            })?;
        Ok(Lake::S3 {
            url: format!("{S3_SCHEME}{bucket}"),
            prefix: prefix.trim_matches('/').to_string(),
            store: Arc::new(store),
        })
    }

    /// The store to register on a DataFusion runtime, with its URL; `None` for a local lake,
    /// which DataFusion reads through its default file store.
    pub fn object_store(&self) -> Option<(&str, Arc<dyn ObjectStore>)> {
        match self {
            Lake::Local(_) => None,
            Lake::S3 { url, store, .. } => Some((url, store.clone())),
        }
    }

    /// Where `relative` is, as DataFusion's listing takes it: a path, or an `s3://` URL.
    pub fn location(&self, relative: &str) -> String {
        match self {
            Lake::Local(dir) => dir.join(relative).to_string_lossy().into_owned(),
            Lake::S3 { url, .. } => format!("{url}/{}", self.key_text(relative)),
        }
    }

    fn key_text(&self, relative: &str) -> String {
        let relative = relative.trim_matches('/');
        match self {
            Lake::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{relative}"),
            _ => relative.to_string(),
        }
    }

    fn key(&self, relative: &str) -> Result<ObjectPath, StorageError> {
        ObjectPath::parse(self.key_text(relative)).map_err(|source| StorageError::InvalidKey {
            path: relative.to_string(),
            source: Box::new(source),
        })
    }

    /// Publishes the file `relative`, whose bytes `write` produces, atomically.
    pub async fn publish<F, E>(&self, relative: &str, write: F) -> Result<(), E>
    where
        F: FnOnce(&mut (dyn Write + Send)) -> Result<(), E> + Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        match self {
            Lake::Local(dir) => {
                let path = dir.join(relative);
                blocking(move || write_file_atomically(&path, write)).await
            }
            Lake::S3 { store, .. } => {
                let key = self.key(relative)?;
                let bytes = blocking(move || -> Result<Vec<u8>, E> {
                    let mut buffer = Vec::new();
                    write(&mut buffer)?;
                    Ok(buffer)
                })
                .await?;
                put(store, &key, bytes)
                    .await
                    .map_err(|e| E::from(StorageError::publish(relative, e)))
            }
        }
    }

    /// Publishes `dir/file` where `dir` is new. Locally the file is written into a staging
    /// directory `.staging-<dir name>` beside `dir`, which is renamed; on S3 the key is new, so
    /// one PUT publishes it.
    pub async fn publish_in_new_dir<F, E>(&self, dir: &str, file: &str, write: F) -> Result<(), E>
    where
        F: FnOnce(&mut (dyn Write + Send)) -> Result<(), E> + Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let Lake::Local(root) = self else {
            return self.publish(&format!("{dir}/{file}"), write).await;
        };
        let published = root.join(dir);
        let (Some(parent), Some(name)) = (published.parent(), published.file_name()) else {
            return Err(StorageError::Location(published.display().to_string()).into());
        };
        let parent = parent.to_path_buf();
        let staging = parent.join(format!(".staging-{}", name.to_string_lossy()));
        let file = file.to_string();
        blocking(move || {
            let failed = |e: std::io::Error| StorageError::publish(published.display(), e);
            std::fs::create_dir_all(&staging).map_err(failed)?;
            let mut out = File::create(staging.join(file)).map_err(failed)?;
            write(&mut out)?;
            out.sync_all().map_err(failed)?;
            std::fs::rename(&staging, &published).map_err(failed)?;
            sync_dir(&parent).map_err(failed)?;
            Ok(())
        })
        .await
    }

    /// The whole content of `relative`.
    pub async fn read(&self, relative: &str) -> Result<Bytes, StorageError> {
        let failed = |source: Cause| StorageError::Read {
            path: relative.to_string(),
            source,
        };
        match self {
            Lake::Local(dir) => tokio::fs::read(dir.join(relative))
                .await
                .map(Bytes::from)
                .map_err(|e| failed(e.into())),
            Lake::S3 { store, .. } => match store.get(&self.key(relative)?).await {
                Ok(got) => got.bytes().await.map_err(|e| failed(e.into())),
                Err(e) => Err(failed(e.into())),
            },
        }
    }

    pub async fn exists(&self, relative: &str) -> Result<bool, StorageError> {
        let failed = |source: Cause| StorageError::CheckExists {
            path: relative.to_string(),
            source,
        };
        match self {
            Lake::Local(dir) => tokio::fs::try_exists(dir.join(relative))
                .await
                .map_err(|e| failed(e.into())),
            Lake::S3 { store, .. } => match store.head(&self.key(relative)?).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(failed(e.into())),
            },
        }
    }

    /// The names of the directories (on S3: the common prefixes) directly under `relative`.
    pub async fn list_dirs(&self, relative: &str) -> Result<Vec<String>, StorageError> {
        let failed = |source| StorageError::ListDirs {
            path: relative.to_string(),
            source,
        };
        let (dirs, _) = self.list(relative, failed).await?;
        Ok(dirs)
    }

    /// The paths (relative to the lake) of the files directly under `relative`; none if it is
    /// absent.
    pub async fn list_files(&self, relative: &str) -> Result<Vec<String>, StorageError> {
        let failed = |source| StorageError::ListFiles {
            path: relative.to_string(),
            source,
        };
        let (_, files) = self.list(relative, failed).await?;
        Ok(files
            .into_iter()
            .map(|name| format!("{relative}/{name}"))
            .collect())
    }

    /// The names of the directories and of the files directly under `relative`; none if it is
    /// absent. `failed` says what went wrong.
    async fn list(
        &self,
        relative: &str,
        failed: impl Fn(Cause) -> StorageError,
    ) -> Result<(Vec<String>, Vec<String>), StorageError> {
        match self {
            Lake::Local(dir) => {
                let (mut dirs, mut files) = (Vec::new(), Vec::new());
                let mut entries = match tokio::fs::read_dir(dir.join(relative)).await {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((dirs, files)),
                    Err(e) => return Err(failed(e.into())),
                };
                while let Some(entry) = entries.next_entry().await.map_err(|e| failed(e.into()))? {
                    let file_type = entry.file_type().await.map_err(|e| failed(e.into()))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if file_type.is_dir() {
                        dirs.push(name);
                    } else if file_type.is_file() {
                        files.push(name);
                    }
                }
                Ok((dirs, files))
            }
            Lake::S3 { store, .. } => {
                let listed = store
                    .list_with_delimiter(Some(&self.key(relative)?))
                    .await
                    .map_err(|e| failed(e.into()))?;
                let dirs = listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect();
                let files = listed
                    .objects
                    .iter()
                    .filter_map(|o| o.location.filename().map(str::to_string))
                    .collect();
                Ok((dirs, files))
            }
        }
    }

    /// Removes the file `relative`; nothing if it is absent.
    pub async fn remove_file(&self, relative: &str) -> Result<(), StorageError> {
        let failed = |source: Cause| StorageError::RemoveFile {
            path: relative.to_string(),
            source,
        };
        match self {
            Lake::Local(dir) => match tokio::fs::remove_file(dir.join(relative)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(e.into())),
                _ => Ok(()),
            },
            Lake::S3 { store, .. } => match store.delete(&self.key(relative)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(failed(e.into())),
            },
        }
    }

    /// Removes the directory `relative` and everything under it; nothing if it is absent.
    pub async fn remove_dir(&self, relative: &str) -> Result<(), StorageError> {
        let failed = |source: Cause| StorageError::RemoveDir {
            path: relative.to_string(),
            source,
        };
        match self {
            Lake::Local(dir) => match tokio::fs::remove_dir_all(dir.join(relative)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(e.into())),
                _ => Ok(()),
            },
            Lake::S3 { store, .. } => {
                let keys: Vec<ObjectPath> = store
                    .list(Some(&self.key(relative)?))
                    .map_ok(|meta| meta.location)
                    .try_collect()
                    .await
                    .map_err(|e| failed(e.into()))?;
                for key in keys {
                    store.delete(&key).await.map_err(|e| failed(e.into()))?;
                }
                Ok(())
            }
        }
    }
}

async fn put(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    bytes: Vec<u8>,
) -> Result<(), object_store::Error> {
    use tracing::Instrument;
    let span = tracing::debug_span!("put_object", key = %key, bytes = bytes.len());
    store
        .put(key, PutPayload::from(bytes))
        .instrument(span)
        .await?;
    Ok(())
}

async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| E::from(StorageError::RunBlocking(e)))?
}

/// Writes `path` atomically on a local disk: a temporary file beside it, synced, then renamed,
/// then the directory synced. A reader never sees a partial file.
pub fn write_file_atomically<E>(
    path: &Path,
    write: impl FnOnce(&mut (dyn Write + Send)) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<StorageError>,
{
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::Location(path.display().to_string()))?;
    let failed = |e: std::io::Error| StorageError::publish(path.display(), e);
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = File::create(&tmp).map_err(failed)?;
    write(&mut file)?;
    file.sync_all().map_err(failed)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(failed)?;
    sync_dir(dir).map_err(failed)?;
    Ok(())
}

/// Makes a rename durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lake_dir_names_a_directory_or_an_s3_prefix() {
        let local = Lake::open(Path::new("./data/lake")).unwrap();
        assert!(local.object_store().is_none());
        assert_eq!(
            local.location("events/a.parquet"),
            "./data/lake/events/a.parquet"
        );
        let s3 = Lake::open(Path::new("s3://bucket/some/prefix/")).unwrap();
        assert_eq!(s3.object_store().map(|(url, _)| url), Some("s3://bucket"));
        assert_eq!(
            s3.location("events/dt=2026-11-21/hour=13/part-1.parquet"),
            "s3://bucket/some/prefix/events/dt=2026-11-21/hour=13/part-1.parquet"
        );
        let root = Lake::open(Path::new("s3://bucket")).unwrap();
        assert_eq!(
            root.location("views/v/view.parquet"),
            "s3://bucket/views/v/view.parquet"
        );
        assert!(matches!(
            Lake::open(Path::new("s3:///prefix")),
            Err(StorageError::Location(_))
        ));
    }

    #[tokio::test]
    async fn local_publish_leaves_no_temporary_files() {
        let dir = std::env::temp_dir().join(format!("storage-test-{}", std::process::id()));
        let lake = Lake::open(&dir).unwrap();
        lake.publish("events/a/part.parquet", |w| -> Result<(), StorageError> {
            w.write_all(b"one")
                .map_err(|e| StorageError::publish("events/a/part.parquet", e))
        })
        .await
        .unwrap();
        lake.publish_in_new_dir(
            "views/v1",
            "view.parquet",
            |w| -> Result<(), StorageError> {
                w.write_all(b"two")
                    .map_err(|e| StorageError::publish("events/a/part.parquet", e))
            },
        )
        .await
        .unwrap();
        assert_eq!(
            &lake.read("events/a/part.parquet").await.unwrap()[..],
            b"one"
        );
        assert!(lake.exists("views/v1/view.parquet").await.unwrap());
        assert_eq!(lake.list_dirs("views").await.unwrap(), ["v1"]);
        assert_eq!(
            std::fs::read_dir(dir.join("events/a")).unwrap().count(),
            1,
            "only the published file"
        );
        lake.remove_dir("views/v1").await.unwrap();
        lake.remove_dir("views/v1").await.unwrap();
        assert!(!lake.exists("views/v1/view.parquet").await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
