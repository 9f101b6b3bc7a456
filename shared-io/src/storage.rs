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
    #[error("lake I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("object store path: {0}")]
    Path(#[from] object_store::path::Error),
    #[error("lake task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
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
            .build()?;
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
        Ok(ObjectPath::parse(self.key_text(relative))?)
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
                put(store, &key, bytes).await.map_err(E::from)
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
            std::fs::create_dir_all(&staging).map_err(StorageError::from)?;
            let mut out = File::create(staging.join(file)).map_err(StorageError::from)?;
            write(&mut out)?;
            out.sync_all().map_err(StorageError::from)?;
            std::fs::rename(&staging, &published).map_err(StorageError::from)?;
            sync_dir(&parent).map_err(StorageError::from)?;
            Ok(())
        })
        .await
    }

    /// The whole content of `relative`.
    pub async fn read(&self, relative: &str) -> Result<Bytes, StorageError> {
        match self {
            Lake::Local(dir) => Ok(Bytes::from(tokio::fs::read(dir.join(relative)).await?)),
            Lake::S3 { store, .. } => Ok(store.get(&self.key(relative)?).await?.bytes().await?),
        }
    }

    pub async fn exists(&self, relative: &str) -> Result<bool, StorageError> {
        match self {
            Lake::Local(dir) => Ok(tokio::fs::try_exists(dir.join(relative)).await?),
            Lake::S3 { store, .. } => match store.head(&self.key(relative)?).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The names of the directories (on S3: the common prefixes) directly under `relative`.
    pub async fn list_dirs(&self, relative: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Lake::Local(dir) => {
                let mut names = Vec::new();
                let mut entries = match tokio::fs::read_dir(dir.join(relative)).await {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                    Err(e) => return Err(e.into()),
                };
                while let Some(entry) = entries.next_entry().await? {
                    if entry.file_type().await?.is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                Ok(names)
            }
            Lake::S3 { store, .. } => {
                let listed = store
                    .list_with_delimiter(Some(&self.key(relative)?))
                    .await?;
                Ok(listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect())
            }
        }
    }

    /// Removes the directory `relative` and everything under it; nothing if it is absent.
    pub async fn remove_dir(&self, relative: &str) -> Result<(), StorageError> {
        match self {
            Lake::Local(dir) => match tokio::fs::remove_dir_all(dir.join(relative)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Lake::S3 { store, .. } => {
                let keys: Vec<ObjectPath> = store
                    .list(Some(&self.key(relative)?))
                    .map_ok(|meta| meta.location)
                    .try_collect()
                    .await?;
                for key in keys {
                    store.delete(&key).await?;
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
) -> Result<(), StorageError> {
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
        .map_err(|e| E::from(StorageError::from(e)))?
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
    std::fs::create_dir_all(dir).map_err(StorageError::from)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = File::create(&tmp).map_err(StorageError::from)?;
    write(&mut file)?;
    file.sync_all().map_err(StorageError::from)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(StorageError::from)?;
    sync_dir(dir).map_err(StorageError::from)?;
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
            Ok(w.write_all(b"one")?)
        })
        .await
        .unwrap();
        lake.publish_in_new_dir(
            "views/v1",
            "view.parquet",
            |w| -> Result<(), StorageError> { Ok(w.write_all(b"two")?) },
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
