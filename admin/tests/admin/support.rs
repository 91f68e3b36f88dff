//! Fixtures: a migrated store per backend, and a macro that runs one test body on both.

use tempfile::TempDir;
use tollgate_admin::store::Store;

/// A migrated store plus what a test needs to look underneath it.
pub struct Db {
    pub store: Store,
    /// The URL the store was opened with, for raw checks through a second pool.
    pub url: String,
    /// Keeps the SQLite file alive for the test's duration.
    _dir: Option<TempDir>,
}

pub async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    Db {
        store,
        url,
        _dir: Some(dir),
    }
}

/// `None` outside CI when `TOLLGATE_TEST_POSTGRES_URL` is unset (the test then passes
/// vacuously, having said so on stderr).
pub async fn postgres() -> Option<Db> {
    let url = tollgate_tests::db::fresh_postgres().await?;
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    Some(Db {
        store,
        url,
        _dir: None,
    })
}

/// A second pool on the same database, to check what was actually written.
pub async fn raw_pool(db: &Db) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&db.url).await.unwrap()
}

/// `on_both_backends!(a, b)` makes `a::sqlite`, `a::postgres`, ... each calling the
/// `async fn a(db: Db)` in the same module.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(crate::support::sqlite().await).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = crate::support::postgres().await {
                    super::$name(db).await;
                }
            }
        }
    )*};
}
pub(crate) use on_both_backends;
