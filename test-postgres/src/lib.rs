//! The middle test tier's database: each test gets a database of its own on the Postgres that
//! `scripts/test.sh` starts (`E2E_DATABASE_URL`), with every migration applied, so a component
//! can be driven directly against a real server without spawning binaries.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum TestDatabaseError {
    #[error(
        "E2E_DATABASE_URL is not set: run the tests through scripts/test.sh, which starts Postgres"
    )]
    NoServer,
    #[error("database URL {0} has no path")]
    BadUrl(String),
    #[error("could not create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("could not connect to database {name}: {source}")]
    Connect { name: String, source: sqlx::Error },
    #[error("could not migrate database {name}: {source}")]
    Migrate {
        name: String,
        source: sqlx::migrate::MigrateError,
    },
}

/// A database created for one test. It is left behind: the test cluster is thrown away.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates `<hint>_<8 hex>` and applies the migrations.
    pub async fn new(hint: &str) -> Result<TestDatabase, TestDatabaseError> {
        let (name, url) = create_database(hint).await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .map_err(|source| TestDatabaseError::Connect {
                name: name.clone(),
                source,
            })?;
        shared_io::db::MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| TestDatabaseError::Migrate {
                name: name.clone(),
                source,
            })?;
        Ok(TestDatabase { name, url, pool })
    }
}

/// Creates an empty database named after `hint` with a unique suffix on the test server;
/// returns its name and URL.
pub async fn create_database(hint: &str) -> Result<(String, String), TestDatabaseError> {
    let admin_url = std::env::var("E2E_DATABASE_URL").map_err(|_| TestDatabaseError::NoServer)?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{hint}_{}", &suffix[..8]);
    let mut admin =
        PgConnection::connect(&admin_url)
            .await
            .map_err(|source| TestDatabaseError::Connect {
                name: "postgres".into(),
                source,
            })?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .map_err(|source| TestDatabaseError::Create {
            name: name.clone(),
            source,
        })?;
    // Closing is best effort: the database exists either way.
    let _ = admin.close().await;
    let url = replace_database(&admin_url, &name)?;
    Ok((name, url))
}

/// `url` with its database replaced by `database`.
pub fn replace_database(url: &str, database: &str) -> Result<String, TestDatabaseError> {
    let (base, _) = url
        .rsplit_once('/')
        .ok_or_else(|| TestDatabaseError::BadUrl(url.to_string()))?;
    Ok(format!("{base}/{database}"))
}
