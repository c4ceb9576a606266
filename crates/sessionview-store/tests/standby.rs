//! A store on a PostgreSQL hot standby (`SESSIONVIEW_TEST_STANDBY_URL`, which `scripts/test`
//! makes of the test server when run as root). A test binary of its own: commits of other tests
//! in the same process would wake its followers in-process and hide what it checks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is a failed test"
)]

use std::time::Duration;

use futures_util::StreamExt;
use sessionview_store::PgStore;
use sessionview_store::prelude::*;
use sessionview_testkit::PgDatabase;

/// A hot standby refuses LISTEN ("cannot execute LISTEN during recovery"): a store on one still
/// wakes its followers, by polling, with no commit at all. On the primary, without commits,
/// nothing wakes them.
#[tokio::test(flavor = "multi_thread")]
async fn followers_of_a_hot_standby_are_woken_by_polling() {
    let db = PgDatabase::new().await;
    let primary = PgStore::connect(&db.url, 2).await.unwrap();
    primary.migrate().await.unwrap();
    let quiet =
        tokio::time::timeout(Duration::from_millis(700), primary.commit_wakeups().next()).await;
    assert!(quiet.is_err(), "no commit, no wake-up");
    let replica = db.standby_url();
    let mut store = None;
    for _ in 0..100 {
        if let Ok(s) = PgStore::connect(&replica, 2).await {
            store = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = store.expect("the database replicated to the standby within 10 s");
    let mut wakeups = store.commit_wakeups();
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(5), wakeups.next())
            .await
            .expect("woken without LISTEN");
    }
    store.close().await;
    primary.close().await;
    db.drop().await;
}
