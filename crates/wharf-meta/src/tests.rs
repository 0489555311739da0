//! Every metadata test runs on SQLite and on PostgreSQL.

use sqlx::migrate::MigrateDatabase;

use crate::{Meta, MetaError, NewManifest};

/// A store on each backend; PostgreSQL gets a fresh database dropped at the end.
struct TestStore {
    meta: Meta,
    /// Where it is: another connection (another process's) opens it again.
    url: String,
    drop_url: Option<String>,
    _dir: tempfile::TempDir,
}

async fn stores() -> Vec<TestStore> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let sqlite = Meta::connect(&sqlite_url).await.expect("sqlite store");
    let base = std::env::var("WHARF_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
    let pg_url = format!("{base}/wharf_test_{}", uuid::Uuid::new_v4().simple());
    let pg = Meta::connect(&pg_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is needed for the tests: {e}"));
    let pg_dir = tempfile::tempdir().unwrap();
    vec![
        TestStore {
            meta: sqlite,
            url: sqlite_url,
            drop_url: None,
            _dir: dir,
        },
        TestStore {
            meta: pg,
            url: pg_url.clone(),
            drop_url: Some(pg_url),
            _dir: pg_dir,
        },
    ]
}

async fn finish(stores: Vec<TestStore>) {
    for s in stores {
        s.meta.close().await;
        if let Some(url) = s.drop_url {
            let _ = sqlx::Any::drop_database(&url).await;
        }
    }
}

impl Meta {
    /// An upload's last steps: its object pinned, then linked.
    async fn pin_and_commit(
        &self,
        registry_id: i64,
        repository: &str,
        digest: &str,
        size: i64,
        upload: Option<(&str, i64, Option<&str>)>,
    ) -> crate::Result<bool> {
        assert_eq!(self.pin_object("", digest, size).await?, crate::Pin::Pinned);
        self.commit_blob(registry_id, "", repository, digest, size, upload)
            .await
    }
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn manifest(d: &str, blobs: Vec<&str>, subject: Option<&str>) -> NewManifest {
    NewManifest {
        digest: d.into(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        artifact_type: Some("application/vnd.example".into()),
        subject: subject.map(str::to_string),
        annotations: Some(r#"{"k":"v"}"#.into()),
        content: b"{}".to_vec(),
        size: 2,
        blobs: blobs.into_iter().map(str::to_string).collect(),
        manifests: vec![],
        content_key: None,
        annotations_key: None,
    }
}

#[tokio::test]
async fn metadata_copies_into_an_empty_store_with_its_ids() {
    let stores = stores().await;
    let (sqlite, pg) = (&stores[0].meta, &stores[1].meta);
    let r = sqlite.ensure_registry("alpha", "eu").await.unwrap();
    let scope = ("repository", "app", "pull".to_string());
    let gone = sqlite
        .create_token(r.id, "gone", "h0", None, std::slice::from_ref(&scope))
        .await
        .unwrap();
    sqlite.delete_token(gone.id).await.unwrap();
    let kept = sqlite
        .create_token(r.id, "kept", "h1", Some(123), std::slice::from_ref(&scope))
        .await
        .unwrap();
    assert!(sqlite.create_upload(r.id, "app", "up1", 10).await.unwrap());
    assert!(sqlite
        .pin_and_commit(r.id, "app", &digest(1), 10, Some(("up1", 0, None)))
        .await
        .unwrap());
    sqlite
        .put_manifest(
            r.id,
            "app",
            manifest(&digest(2), vec![&digest(1)], None),
            Some("v1"),
        )
        .await
        .unwrap();
    assert!(sqlite.create_upload(r.id, "app", "open", 10).await.unwrap());
    assert!(sqlite
        .advance_upload("open", 0, 3, vec![1, 2, 3], Some("p-0"), None)
        .await
        .unwrap());
    let key = sqlite
        .create_admin_key("ci", "hash1", "wak_1", "registry:read", None)
        .await
        .unwrap();

    let mut counts = Vec::new();
    sqlite
        .copy_into(pg, |table, n| counts.push((table.to_string(), n)))
        .await
        .unwrap();
    assert!(counts.contains(&("tokens".to_string(), 1)), "{counts:?}");
    let r2 = pg.registry("alpha").await.unwrap().unwrap();
    assert_eq!(r2, r);
    let t = pg.token(r.id, "kept").await.unwrap().unwrap();
    assert_eq!(
        (t.id, t.expires_at, t.scopes.len()),
        (kept.id, Some(123), 1)
    );
    let m = pg
        .manifest_by_tag(r.id, "app", "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.digest, digest(2));
    assert_eq!(
        pg.repository_blob(r.id, "app", &digest(1)).await.unwrap(),
        Some(10)
    );
    let open = pg.get_upload(r.id, "app", "open").await.unwrap().unwrap();
    assert_eq!(
        (open.size, open.hash_state, open.parts),
        (3, Some(vec![1, 2, 3]), vec!["p-0".to_string()])
    );
    assert_eq!(
        pg.admin_key_by_hash("hash1").await.unwrap().unwrap().id,
        key.id
    );
    // New rows take ids past the copied ones (and past the deleted token's).
    let next = pg
        .create_token(r.id, "next", "h2", None, std::slice::from_ref(&scope))
        .await
        .unwrap();
    assert!(next.id > kept.id && next.id > gone.id);
    // A store that holds data already is refused, and keeps it.
    let err = sqlite.copy_into(pg, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    assert!(pg.token(r.id, "next").await.unwrap().is_some());
    finish(stores).await;
}

#[tokio::test]
async fn data_keys_are_recorded_in_batches_all_or_nothing() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let keys: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("k{i}"), vec![i; 8])).collect();
        m.insert_data_keys(&keys, "m1").await.unwrap();
        for (id, wrapped) in &keys {
            assert_eq!(m.data_key(id).await.unwrap().as_ref(), Some(wrapped));
        }
        // A batch with one id already taken records none of its keys.
        let clash = vec![("k3".to_string(), vec![3]), ("k0".to_string(), vec![9])];
        assert!(m.insert_data_keys(&clash, "m1").await.is_err());
        assert_eq!(m.data_key("k3").await.unwrap(), None);
        assert_eq!(m.data_key("k0").await.unwrap(), Some(vec![0; 8]));
        assert_eq!(
            m.data_key_counts().await.unwrap(),
            vec![("m1".to_string(), 3)]
        );
    }
    finish(stores).await;
}

#[tokio::test]
async fn an_upload_that_advances_retires_its_replaced_hash_states_key() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let keys: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("s{i}"), vec![i; 8])).collect();
        m.insert_data_keys(&keys, "m1").await.unwrap();
        let r = m.ensure_registry("alpha", "eu").await.unwrap();
        assert!(m.create_upload(r.id, "app", "u1", 2).await.unwrap());
        assert!(m
            .advance_upload("u1", 0, 5, vec![1], Some("p-0"), None)
            .await
            .unwrap());
        assert!(m
            .advance_upload("u1", 5, 9, vec![2], None, Some("s0"))
            .await
            .unwrap());
        assert_eq!(m.data_key("s0").await.unwrap(), None, "{}", s.url);
        // A stale request changes nothing, its key to retire included.
        assert!(!m
            .advance_upload("u1", 5, 12, vec![3], None, Some("s1"))
            .await
            .unwrap());
        assert_eq!(m.data_key("s1").await.unwrap(), Some(vec![1; 8]));
        let upload = m.get_upload(r.id, "app", "u1").await.unwrap();
        assert_eq!(upload.map(|u| u.size), Some(9));
        // Closing the session retires its last state's key; a stale close retires nothing.
        let closing = |size, key| Some(("u1", size, Some(key)));
        assert!(!m
            .pin_and_commit(r.id, "app", &digest(1), 9, closing(5, "s1"))
            .await
            .unwrap());
        assert_eq!(m.data_key("s1").await.unwrap(), Some(vec![1; 8]));
        assert!(m
            .pin_and_commit(r.id, "app", &digest(1), 9, closing(9, "s1"))
            .await
            .unwrap());
        assert_eq!(m.data_key("s1").await.unwrap(), None);
        assert_eq!(
            m.data_key_counts().await.unwrap(),
            vec![("m1".to_string(), 1)]
        );
    }
    finish(stores).await;
}

#[tokio::test]
async fn upload_sessions_are_capped_per_repository_and_expire_by_age() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("alpha", "eu").await.unwrap();
        assert!(m.create_upload(r.id, "app", "u1", 2).await.unwrap());
        assert!(m.create_upload(r.id, "app", "u2", 2).await.unwrap());
        assert!(
            !m.create_upload(r.id, "app", "u3", 2).await.unwrap(),
            "a third session passes a cap of two"
        );
        assert!(m.get_upload(r.id, "app", "u3").await.unwrap().is_none());
        // The cap counts per repository.
        assert!(m.create_upload(r.id, "other", "u4", 2).await.unwrap());

        // A session with a saved hash state hands it over when it expires (its data key goes).
        assert!(m
            .advance_upload("u4", 0, 3, vec![4], None, None)
            .await
            .unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let cutoff = crate::now_millis();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // A session that moved on after the cutoff is kept.
        assert!(m
            .advance_upload("u2", 0, 5, vec![1], None, None)
            .await
            .unwrap());
        let mut expired = m.expire_uploads(cutoff).await.unwrap();
        expired.sort();
        assert_eq!(
            expired,
            vec![("u1".to_string(), None), ("u4".to_string(), Some(vec![4]))]
        );
        assert!(m.expire_uploads(cutoff).await.unwrap().is_empty());
        assert_eq!(
            m.get_upload(r.id, "app", "u2").await.unwrap().unwrap().size,
            5
        );
        assert!(m.create_upload(r.id, "app", "u5", 2).await.unwrap());
    }
    finish(stores).await;
}

/// An upload's progress is committed without waiting for the disk (a lost chunk record is
/// redone by the client), but is seen at once, and a durable commit after it is still synced:
/// on SQLite the setting is the group's own, never the one the group before left.
#[tokio::test]
async fn upload_progress_is_seen_at_once_and_leaves_later_commits_durable() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("alpha", "eu").await.unwrap();
        assert!(m.create_upload(r.id, "app", "u1", 8).await.unwrap());
        let sync = || async {
            sqlx::query_scalar::<_, i32>("PRAGMA synchronous")
                .fetch_one(&m.write)
                .await
                .unwrap()
        };
        let sqlite = m.backend() == crate::Backend::Sqlite;
        let (normal, full) = (1, 2);
        let mut at = 0;
        for step in 1..=3 {
            assert!(m
                .advance_upload("u1", at, at + 10, vec![step], None, None)
                .await
                .unwrap());
            at += 10;
            let seen = m.get_upload(r.id, "app", "u1").await.unwrap().unwrap();
            assert_eq!((seen.size, seen.hash_state), (at, Some(vec![step])));
            if sqlite {
                assert_eq!(sync().await, normal, "a group of progress records only");
            }
            // Any other write is durable again.
            assert!(m
                .create_upload(r.id, "app", &format!("d{step}"), 8)
                .await
                .unwrap());
            if sqlite {
                assert_eq!(sync().await, full, "after a durable commit");
            }
        }
        // A stale view still loses the race, as with durable commits.
        assert!(!m
            .advance_upload("u1", 0, 5, vec![9], None, None)
            .await
            .unwrap());
    }
    finish(stores).await;
}

#[tokio::test]
async fn token_and_admin_key_ids_are_never_reused() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("alpha", "eu").await.unwrap();
        let scope = ("repository", "app", "pull".to_string());
        let first = m
            .create_token(r.id, "first", "hash", None, std::slice::from_ref(&scope))
            .await
            .unwrap();
        assert!(m.delete_token(first.id).await.unwrap());
        let second = m
            .create_token(r.id, "second", "hash", None, &[scope])
            .await
            .unwrap();
        assert!(
            second.id > first.id,
            "a deleted token's id was handed out again"
        );
        assert!(m.token_by_id(first.id).await.unwrap().is_none());

        let k1 = m
            .create_admin_key("one", "h1", "wak_1", "registry:read", None)
            .await
            .unwrap();
        sqlx::query("DELETE FROM admin_keys WHERE id = $1")
            .bind(k1.id)
            .execute(&m.write)
            .await
            .unwrap();
        let k2 = m
            .create_admin_key("two", "h2", "wak_2", "registry:read", None)
            .await
            .unwrap();
        assert!(k2.id > k1.id, "a deleted key's id was handed out again");
    }
    finish(stores).await;
}

#[tokio::test]
async fn blobs_are_visible_per_repository_and_registry() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let a = m.ensure_registry("alpha", "eu").await.unwrap();
        let b = m.ensure_registry("beta", "eu").await.unwrap();
        assert_eq!(m.ensure_registry("alpha", "eu").await.unwrap().id, a.id);
        assert!(m.create_upload(a.id, "app", "up1", 10).await.unwrap());
        let fresh = m.get_upload(a.id, "app", "up1").await.unwrap().unwrap();
        assert_eq!((fresh.hash_state, fresh.parts.len()), (None, 0));
        assert!(m
            .advance_upload("up1", 0, 10, vec![7, 7], Some("p-0"), None)
            .await
            .unwrap());
        assert!(
            !m.advance_upload("up1", 0, 20, vec![9], Some("p-lost"), None)
                .await
                .unwrap(),
            "stale offset must not win"
        );
        let moved = m.get_upload(a.id, "app", "up1").await.unwrap().unwrap();
        assert_eq!(moved.hash_state, Some(vec![7, 7]));
        assert_eq!(moved.parts, vec!["p-0".to_string()]);
        assert_eq!(
            m.get_upload(a.id, "app", "up1")
                .await
                .unwrap()
                .unwrap()
                .size,
            10
        );
        assert!(m.get_upload(a.id, "other", "up1").await.unwrap().is_none());
        assert!(m.get_upload(b.id, "app", "up1").await.unwrap().is_none());

        // A commit from a stale recorded size changes nothing.
        assert!(!m
            .pin_and_commit(a.id, "app", &digest(1), 10, Some(("up1", 0, None)))
            .await
            .unwrap());
        assert_eq!(
            m.repository_blob(a.id, "app", &digest(1)).await.unwrap(),
            None
        );
        assert!(m
            .pin_and_commit(a.id, "app", &digest(1), 10, Some(("up1", 10, None)))
            .await
            .unwrap());
        assert!(m.get_upload(a.id, "app", "up1").await.unwrap().is_none());
        assert_eq!(
            m.repository_blob(a.id, "app", &digest(1)).await.unwrap(),
            Some(10)
        );
        assert_eq!(
            m.repository_blob(b.id, "app", &digest(1)).await.unwrap(),
            None
        );
        assert_eq!(
            m.repository_blob(a.id, "other", &digest(1)).await.unwrap(),
            None
        );

        assert_eq!(
            m.mount_blob(a.id, "", "app", "copy", &digest(1))
                .await
                .unwrap(),
            Some(10)
        );
        assert_eq!(
            m.mount_blob(a.id, "", "nope", "copy2", &digest(1))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            m.mount_blob(b.id, "", "app", "copy", &digest(1))
                .await
                .unwrap(),
            None
        );
        assert!(m.unlink_blob(a.id, "app", &digest(1)).await.unwrap());
        assert!(!m.unlink_blob(a.id, "app", &digest(1)).await.unwrap());
        assert_eq!(
            m.repository_blob(a.id, "copy", &digest(1)).await.unwrap(),
            Some(10)
        );

        let page = m.list_repositories(a.id, None, 10, false).await.unwrap();
        assert_eq!(page.items, vec!["app", "copy"]);
        assert!(m
            .list_repositories(b.id, None, 10, false)
            .await
            .unwrap()
            .items
            .is_empty());
    }
    finish(stores).await;
}

#[tokio::test]
async fn a_manifests_data_keys_go_with_it_and_a_copy_pushed_again_keeps_none() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let keys: Vec<(String, Vec<u8>)> = ["c1", "a1", "c2", "a2", "c3", "a3"]
            .iter()
            .map(|k| (k.to_string(), vec![1; 8]))
            .collect();
        m.insert_data_keys(&keys, "m1").await.unwrap();
        let kept = |key: &'static str| async move { m.data_key(key).await.unwrap().is_some() };
        let r = m.ensure_registry("alpha", "eu").await.unwrap();
        let sealed = |d: u8, [content, annotations]: [&str; 2]| NewManifest {
            content_key: Some(content.to_string()),
            annotations_key: Some(annotations.to_string()),
            ..manifest(&digest(d), vec![], None)
        };
        m.put_manifest(r.id, "app", sealed(7, ["c1", "a1"]), Some("v1"))
            .await
            .unwrap();
        // The second push keeps the stored copy, tags it, and drops its own copy's keys.
        m.put_manifest(r.id, "app", sealed(7, ["c2", "a2"]), Some("v2"))
            .await
            .unwrap();
        for (key, expected) in [("c1", true), ("a1", true), ("c2", false), ("a2", false)] {
            assert_eq!(kept(key).await, expected, "{key} on {}", s.url);
        }
        let tagged = m.manifest_by_tag(r.id, "app", "v2").await.unwrap();
        assert_eq!(tagged.map(|t| t.digest), Some(digest(7)));
        // A deleted manifest's keys go with it; so do those of a deleted repository's.
        m.put_manifest(r.id, "app", sealed(8, ["c3", "a3"]), None)
            .await
            .unwrap();
        assert!(m.delete_manifest(r.id, "app", &digest(7)).await.unwrap());
        assert!(!kept("c1").await && !kept("a1").await, "on {}", s.url);
        assert!(kept("c3").await && kept("a3").await);
        assert!(m.delete_repository(r.id, "app").await.unwrap());
        assert!(!kept("c3").await && !kept("a3").await, "on {}", s.url);
    }
    finish(stores).await;
}

/// Annotations sealed before their key was recorded with the manifest are found, in row
/// order, and their key recorded once; from then on it goes with the manifest.
#[tokio::test]
async fn annotation_keys_sealed_before_they_were_recorded_are_recorded() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let keys = [
            ("k1".to_string(), vec![1; 8]),
            ("k2".to_string(), vec![1; 8]),
        ];
        m.insert_data_keys(&keys, "m1").await.unwrap();
        let r = m.ensure_registry("alpha", "eu").await.unwrap();
        let with = |d: u8, annotations: &str| NewManifest {
            annotations: Some(annotations.to_string()),
            ..manifest(&digest(d), vec![], None)
        };
        m.put_manifest(r.id, "app", with(1, "sealed:AAAA"), None)
            .await
            .unwrap();
        m.put_manifest(r.id, "app", with(2, r#"{"in":"clear"}"#), None)
            .await
            .unwrap();
        m.put_manifest(r.id, "app", with(3, "sealed:BBBB"), None)
            .await
            .unwrap();
        let found = m.sealed_annotations_without_key(0, 10).await.unwrap();
        let texts: Vec<&str> = found.iter().map(|(_, a)| a.as_str()).collect();
        assert_eq!(texts, ["sealed:AAAA", "sealed:BBBB"], "on {}", s.url);
        let after_first = m.sealed_annotations_without_key(found[0].0, 10).await;
        assert_eq!(after_first.unwrap().len(), 1, "rows after the first");
        // Annotations that changed meanwhile are not given the key.
        assert!(!m
            .record_annotations_key(found[0].0, "sealed:XXXX", "k1")
            .await
            .unwrap());
        assert!(m
            .record_annotations_key(found[0].0, "sealed:AAAA", "k1")
            .await
            .unwrap());
        assert!(m
            .record_annotations_key(found[1].0, "sealed:BBBB", "k2")
            .await
            .unwrap());
        assert!(!m
            .record_annotations_key(found[1].0, "sealed:BBBB", "k1")
            .await
            .unwrap());
        assert!(m
            .sealed_annotations_without_key(0, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(m.delete_manifest(r.id, "app", &digest(1)).await.unwrap());
        assert!(m.data_key("k1").await.unwrap().is_none(), "on {}", s.url);
        assert!(m.data_key("k2").await.unwrap().is_some());
    }
    finish(stores).await;
}

#[tokio::test]
async fn manifests_need_their_references_and_tags_list_in_order() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("default", "eu").await.unwrap();
        let (layer, d1, d2) = (digest(1), digest(2), digest(3));
        let missing = m
            .put_manifest(r.id, "app", manifest(&d1, vec![&layer], None), Some("v1"))
            .await;
        match missing {
            Err(MetaError::MissingReferences(d)) => assert_eq!(d, vec![layer.clone()]),
            other => panic!("expected missing references, got {other:?}"),
        }
        // A refused manifest does not create the repository.
        assert!(m.list_tags(r.id, "app", None, 10).await.unwrap().is_none());

        m.pin_and_commit(r.id, "app", &layer, 5, None)
            .await
            .unwrap();
        for tag in ["b", "a", "C", "c"] {
            m.put_manifest(r.id, "app", manifest(&d1, vec![&layer], None), Some(tag))
                .await
                .unwrap();
        }
        // Byte order: upper case sorts before lower case on both backends.
        let page = m.list_tags(r.id, "app", None, 10).await.unwrap().unwrap();
        assert_eq!(page.items, vec!["C", "a", "b", "c"]);
        assert!(!page.more);
        let page = m
            .list_tags(r.id, "app", Some("a"), 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.items, vec!["b", "c"]);
        assert!(!page.more);
        let page = m.list_tags(r.id, "app", None, 2).await.unwrap().unwrap();
        assert_eq!((page.items.len(), page.more), (2, true));

        let got = m.manifest_by_tag(r.id, "app", "a").await.unwrap().unwrap();
        assert_eq!(got.digest, d1);
        assert_eq!(got.content, b"{}");

        // A referrer, then its listing with and without the artifact type filter.
        m.put_manifest(r.id, "app", manifest(&d2, vec![&layer], Some(&d1)), None)
            .await
            .unwrap();
        let refs = m.referrers(r.id, "app", &d1, None).await.unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].digest, d2);
        assert_eq!(refs[0].annotations.as_deref(), Some(r#"{"k":"v"}"#));
        assert!(m
            .referrers(r.id, "app", &d1, Some("application/other"))
            .await
            .unwrap()
            .is_empty());

        assert!(m.delete_tag(r.id, "app", "C").await.unwrap());
        assert!(!m.delete_tag(r.id, "app", "C").await.unwrap());
        assert!(m.delete_manifest(r.id, "app", &d1).await.unwrap());
        assert!(m
            .manifest_by_digest(r.id, "app", &d1)
            .await
            .unwrap()
            .is_none());
        let page = m.list_tags(r.id, "app", None, 10).await.unwrap().unwrap();
        assert!(page.items.is_empty(), "tags go with their manifest");
    }
    finish(stores).await;
}

#[tokio::test]
async fn registries_count_usage_and_delete_frees_unshared_blobs() {
    use crate::{AuditEntry, NewRegistry};
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let new = |name| NewRegistry {
            name,
            location: "eu",
            scanning: false,
            gc_schedule: Some(r#"{"cron":"0 3 * * *"}"#),
        };
        let a = m.create_registry(&new("alpha")).await.unwrap();
        let b = m.create_registry(&new("beta")).await.unwrap();
        assert!(matches!(
            m.create_registry(&new("alpha")).await,
            Err(MetaError::Conflict(_))
        ));
        let (shared, only_a) = (digest(1), digest(2));
        m.pin_and_commit(a.id, "app", &shared, 100, None)
            .await
            .unwrap();
        m.pin_and_commit(a.id, "app", &only_a, 10, None)
            .await
            .unwrap();
        m.pin_and_commit(b.id, "app", &shared, 100, None)
            .await
            .unwrap();
        m.put_manifest(
            a.id,
            "app",
            manifest(&digest(3), vec![&shared, &only_a], None),
            Some("v1"),
        )
        .await
        .unwrap();

        let stats = m.registry_stats(a.id).await.unwrap();
        assert_eq!(
            (stats.repositories, stats.artifacts, stats.storage_bytes),
            (1, 1, 112)
        );
        let (repos, more) = m.list_repository_info(a.id, None, 10).await.unwrap();
        assert!(!more);
        assert_eq!(
            (repos[0].artifacts, repos[0].tags, repos[0].storage_bytes),
            (1, 1, 112)
        );
        let (list, more) = m.list_registries(None, 1).await.unwrap();
        assert_eq!((list[0].name.as_str(), more), ("alpha", true));

        assert!(!a.read_only);
        let changes = crate::RegistryChanges {
            scanning: Some(true),
            gc_schedule: Some(None),
            rate_limit: Some(Some(5)),
            read_only: Some(true),
            ..Default::default()
        };
        m.update_registry(a.id, &changes).await.unwrap();
        let a2 = m.registry("alpha").await.unwrap().unwrap();
        assert!(a2.scanning && a2.read_only);
        assert_eq!(a2.gc_schedule, None);
        assert_eq!(a2.rate_limit, Some(5));

        assert!(m.delete_registry("alpha").await.unwrap());
        assert!(m.registry("alpha").await.unwrap().is_none());
        assert!(!m.delete_registry("alpha").await.unwrap());
        assert_eq!(
            m.repository_blob(b.id, "app", &shared).await.unwrap(),
            Some(100)
        );
        assert!(m.delete_repository(b.id, "app").await.unwrap());
        assert!(!m.delete_repository(b.id, "app").await.unwrap());

        let key = m
            .create_admin_key("ci", "hash1", "wak_1234", "registry:read", None)
            .await
            .unwrap();
        assert_eq!(
            m.admin_key_by_hash("hash1").await.unwrap().unwrap().id,
            key.id
        );
        assert_eq!(m.count_admin_keys().await.unwrap(), 1);
        assert!(m.revoke_admin_key(key.id).await.unwrap().is_some());
        assert!(m.revoke_admin_key(key.id).await.unwrap().is_none());
        assert!(m.admin_key_by_hash("hash1").await.unwrap().is_none());

        for (action, registry) in [("a", "alpha"), ("b", "beta"), ("c", "alpha")] {
            let entry = AuditEntry {
                actor: "admin-key:ci#1",
                action,
                registry: Some(registry),
                ..Default::default()
            };
            m.audit(&entry).await.unwrap();
        }
        let (records, more) = m.list_audit(Some("alpha"), None, 1).await.unwrap();
        assert_eq!((records[0].action.as_str(), more), ("c", true));
        let (older, _) = m
            .list_audit(Some("alpha"), Some(records[0].id), 10)
            .await
            .unwrap();
        assert_eq!(
            older.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
    }
    finish(stores).await;
}

fn advisory(id: &str, digest: &str, packages: &[(&str, &str)]) -> crate::AdvisoryRow {
    crate::AdvisoryRow {
        source: "debian12".into(),
        id: id.into(),
        modified: "2026-11-23T00:00:00Z".into(),
        digest: digest.into(),
        doc: format!("{{\"id\":\"{id}\",\"v\":\"{digest}\"}}"),
        packages: packages
            .iter()
            .map(|(e, p)| (e.to_string(), p.to_string()))
            .collect(),
        aliases: vec![format!("ALIAS-{id}")],
    }
}

/// `wharf vulndb import` writes beside a running server: two processes with their own
/// connections to one database. Neither fails for the other's writes ("database is locked"
/// came from SQLite transactions that read first and could not take the write lock later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_beside_a_running_server_wait_their_turn() {
    let stores = stores().await;
    for s in &stores {
        let server = s.meta.clone();
        let importer = Meta::connect(&s.url).await.unwrap();
        let a = server.ensure_registry("alpha", "eu").await.unwrap();
        let import = tokio::spawn(async move {
            for round in 0..20 {
                let rows: Vec<crate::AdvisoryRow> = (0..300)
                    .map(|i| {
                        advisory(
                            &format!("CVE-{i}"),
                            &format!("{round}"),
                            &[("Debian:12", "openssl")],
                        )
                    })
                    .collect();
                importer.upsert_advisories(&rows).await?;
                let scores: Vec<crate::ScoreRow> = (0..1000)
                    .map(|i| crate::ScoreRow {
                        cve: format!("CVE-{i}"),
                        source: "nvd".into(),
                        version: "3.1".into(),
                        vector: None,
                        score: f64::from(round),
                        modified: Some(format!("{round}")),
                    })
                    .collect();
                importer.upsert_scores(&scores).await?;
            }
            importer.close().await;
            crate::Result::Ok(())
        });
        // Meanwhile the server pushes: transactions that read before they write.
        let mut pushed = 0;
        while !import.is_finished() {
            server
                .put_manifest(
                    a.id,
                    "app",
                    manifest(&format!("sha256:{pushed:064x}"), vec![], None),
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("push {pushed} beside the import: {e}"));
            pushed += 1;
        }
        import.await.unwrap().expect("import beside the server");
        assert!(pushed > 0);
    }
    finish(stores).await;
}

/// Scheduled imports: one node at a time, when due or asked for; a stopped node's run is
/// taken over.
#[tokio::test]
async fn scheduled_imports_are_claimed_once_when_due() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let hour = 3_600_000;
        let claim = || async {
            let now = crate::now_millis();
            m.claim_vuln_import(now - hour, now - 600_000)
                .await
                .unwrap()
        };
        let state = m.vuln_db_state().await.unwrap();
        assert_eq!(state.run_started_at, None);
        assert!(claim().await, "never ran: due");
        assert!(!claim().await, "claimed by one node");
        let running = m.vuln_db_state().await.unwrap();
        assert!(running.run_claimed_at.is_some() && running.run_started_at.is_some());
        m.finish_vuln_import("{\"files\":[]}").await.unwrap();
        let done = m.vuln_db_state().await.unwrap();
        assert_eq!(done.run_claimed_at, None);
        assert!(done.run_finished_at >= done.run_started_at);
        assert_eq!(done.run_report.as_deref(), Some("{\"files\":[]}"));
        assert!(!claim().await, "ran a moment ago: not due");
        // Asked for: due at once, and once.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        m.request_vuln_import().await.unwrap();
        assert!(claim().await);
        assert!(!claim().await);
        // Its node stopped without finishing: taken over once the claim is stale.
        let later = crate::now_millis() + 2 * hour;
        assert!(m
            .claim_vuln_import(later - hour, later - 600_000)
            .await
            .unwrap());
        // Counts of what is stored.
        m.upsert_advisories(&[advisory("CVE-1", "a", &[("Debian:12", "x")])])
            .await
            .unwrap();
        assert_eq!(m.vuln_db_state().await.unwrap().advisories, 1);
    }
    finish(stores).await;
}

#[tokio::test]
async fn vulnerability_imports_are_idempotent_and_incremental() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let first = vec![
            advisory("CVE-1", "a", &[("Debian:12", "openssl")]),
            advisory(
                "CVE-2",
                "b",
                &[("Debian:12", "openssl"), ("Debian:12", "curl")],
            ),
        ];
        let c = m.upsert_advisories(&first).await.unwrap();
        assert_eq!((c.added, c.updated, c.unchanged), (2, 0, 0));
        let c = m.upsert_advisories(&first).await.unwrap();
        assert_eq!((c.added, c.updated, c.unchanged), (0, 0, 2));
        // CVE-2 changes and no longer names curl; CVE-3 is new.
        let second = vec![
            advisory("CVE-1", "a", &[("Debian:12", "openssl")]),
            advisory("CVE-2", "b2", &[("Debian:12", "openssl")]),
            advisory("CVE-3", "c", &[("Debian:12", "curl")]),
        ];
        let c = m.upsert_advisories(&second).await.unwrap();
        assert_eq!((c.added, c.updated, c.unchanged), (1, 1, 1));
        let mut docs = m
            .advisories_for("Debian:12", &["openssl".into(), "curl".into()])
            .await
            .unwrap();
        docs.sort();
        assert_eq!(
            docs,
            [
                (
                    "curl".to_string(),
                    "{\"id\":\"CVE-3\",\"v\":\"c\"}".to_string()
                ),
                (
                    "openssl".to_string(),
                    "{\"id\":\"CVE-1\",\"v\":\"a\"}".to_string()
                ),
                (
                    "openssl".to_string(),
                    "{\"id\":\"CVE-2\",\"v\":\"b2\"}".to_string()
                ),
            ]
        );
        // Found by ID or by alias.
        let named = m.advisories_named("ALIAS-CVE-2").await.unwrap();
        assert_eq!(named.len(), 1);
        assert!(named[0].1.contains("b2"));
        assert_eq!(m.advisories_named("CVE-3").await.unwrap().len(), 1);
        assert!(m.advisories_named("CVE-9").await.unwrap().is_empty());
        assert!(m
            .advisories_for("Alpine:v3.17", &["openssl".into()])
            .await
            .unwrap()
            .is_empty());
        m.record_vuln_source(
            "debian12",
            "osv",
            "/data/debian12.jsonl.gz",
            Some("2026-11-23"),
            None,
        )
        .await
        .unwrap();
        let sources = m.vuln_sources().await.unwrap();
        assert_eq!(
            (sources[0].source.as_str(), sources[0].records),
            ("debian12", 3)
        );
        assert_eq!(
            m.newest_advisory("debian12").await.unwrap().as_deref(),
            Some("2026-11-23T00:00:00Z")
        );

        let score = |cve: &str, v: f64, modified: &str| crate::ScoreRow {
            cve: cve.into(),
            source: "nvd".into(),
            version: "3.1".into(),
            vector: Some("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H".into()),
            score: v,
            modified: Some(modified.into()),
        };
        let c = m
            .upsert_scores(&[score("CVE-1", 9.8, "x"), score("CVE-2", 5.0, "x")])
            .await
            .unwrap();
        assert_eq!((c.added, c.updated, c.unchanged), (2, 0, 0));
        let c = m
            .upsert_scores(&[score("CVE-1", 9.8, "x"), score("CVE-2", 7.5, "y")])
            .await
            .unwrap();
        assert_eq!((c.added, c.updated, c.unchanged), (0, 1, 1));
        let mut got = m
            .scores_for(&["CVE-2".into(), "CVE-9".into()])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got.pop().unwrap().score, 7.5);

        assert_eq!(m.load_inventory("sha256:x").await.unwrap(), None);
        m.save_inventory("sha256:x", 1, "{}").await.unwrap();
        m.save_inventory("sha256:x", 2, "{\"a\":1}").await.unwrap();
        assert_eq!(
            m.load_inventory("sha256:x").await.unwrap(),
            Some((2, "{\"a\":1}".to_string()))
        );
    }
    finish(stores).await;
}

#[tokio::test]
async fn audit_batches_keep_every_entry_in_order() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let a = m.ensure_registry("alpha", "eu").await.unwrap();
        let gone = m.ensure_registry("gone", "eu").await.unwrap();
        // 250 entries cross the 100-row statements; those of a deleted registry are dropped.
        let entries: Vec<crate::OwnedAuditEntry> = (0..250)
            .map(|i| crate::OwnedAuditEntry {
                actor: format!("token:{i}"),
                action: "pull".into(),
                registry_id: if i % 10 == 9 { gone.id } else { a.id },
                repository: Some(format!("app{i}")),
                digest: (i % 2 == 0).then(|| format!("sha256:{i:064}")),
                detail: None,
            })
            .collect();
        m.delete_registry("gone").await.unwrap();
        m.audit_batch(entries.clone()).await.unwrap();
        let (records, more) = m.list_audit(Some("alpha"), None, 1000).await.unwrap();
        assert!(!more);
        let want: Vec<_> = entries.iter().filter(|e| e.registry_id == a.id).collect();
        assert_eq!(records.len(), want.len());
        // Newest first: the last entry queued has the highest id.
        for (r, e) in records.iter().rev().zip(&want) {
            assert_eq!(r.actor, e.actor);
            assert_eq!(r.registry.as_deref(), Some("alpha"));
            assert_eq!(r.repository, e.repository);
            assert_eq!(r.digest, e.digest);
        }
        assert!(m
            .list_audit(Some("gone"), None, 10)
            .await
            .unwrap()
            .0
            .is_empty());
    }
    finish(stores).await;
}

/// Many writers at once: on SQLite their transactions are committed in groups, each in a
/// savepoint. A refused one (missing references) must leave nothing behind, not even the
/// repository it created, while its neighbours in the same group land whole.
#[tokio::test]
async fn concurrent_writes_land_or_fail_each_on_their_own() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("default", "eu").await.unwrap();
        let writes = (0..48u8).map(|i| {
            let m = m.clone();
            async move {
                let repo = format!("app{i}");
                let layer = digest(i);
                // Every third image never gets its layer: its manifest must be refused.
                if i % 3 != 0 {
                    let id = format!("up{i}");
                    assert!(m.create_upload(r.id, &repo, &id, 10).await.unwrap());
                    assert!(m
                        .pin_and_commit(r.id, &repo, &layer, 7, Some((&id, 0, None)))
                        .await
                        .unwrap());
                }
                let d = digest(i.wrapping_add(100));
                m.put_manifest(r.id, &repo, manifest(&d, vec![&layer], None), Some("v1"))
                    .await
            }
        });
        let results = futures_util::future::join_all(writes).await;
        for (i, result) in results.into_iter().enumerate() {
            match (i % 3, result) {
                (0, Err(MetaError::MissingReferences(d))) => assert_eq!(d, vec![digest(i as u8)]),
                (0, other) => panic!("app{i}: expected missing references, got {other:?}"),
                (_, other) => other.unwrap_or_else(|e| panic!("app{i}: {e}")),
            }
        }
        let mut landed = Vec::new();
        let mut last = None;
        loop {
            let page = m
                .list_repositories(r.id, last.as_deref(), 100, false)
                .await
                .unwrap();
            landed.extend(page.items.iter().cloned());
            if !page.more {
                break;
            }
            last = page.items.last().cloned();
        }
        let mut expected: Vec<String> = (0..48)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("app{i}"))
            .collect();
        expected.sort();
        assert_eq!(landed, expected);
        for i in (0..48u8).filter(|i| i % 3 != 0) {
            let got = m
                .manifest_by_tag(r.id, &format!("app{i}"), "v1")
                .await
                .unwrap();
            assert_eq!(got.map(|g| g.digest), Some(digest(i + 100)), "app{i}");
        }
        // Upload sessions closed by their blob's commit are gone.
        assert!(m.get_upload(r.id, "app1", "up1").await.unwrap().is_none());
    }
    finish(stores).await;
}

/// A write alone in its group (on SQLite it then runs without a savepoint of its own) that is
/// refused leaves nothing behind, answers with its own error, and the writes after it land.
#[tokio::test]
async fn a_refused_write_on_its_own_leaves_nothing_and_says_why() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("default", "eu").await.unwrap();
        let image = || manifest(&digest(200), vec![&digest(1)], None);
        let refused = m.put_manifest(r.id, "lone", image(), Some("v1")).await;
        match refused {
            Err(MetaError::MissingReferences(d)) => assert_eq!(d, vec![digest(1)]),
            other => panic!("expected missing references, got {other:?}"),
        }
        let page = m.list_repositories(r.id, None, 100, false).await.unwrap();
        assert!(
            page.items.is_empty(),
            "the refused write created {:?}",
            page.items
        );
        assert!(m.create_upload(r.id, "lone", "up", 10).await.unwrap());
        assert!(m
            .pin_and_commit(r.id, "lone", &digest(1), 7, Some(("up", 0, None)))
            .await
            .unwrap());
        m.put_manifest(r.id, "lone", image(), Some("v1"))
            .await
            .unwrap();
        let got = m.manifest_by_tag(r.id, "lone", "v1").await.unwrap();
        assert_eq!(got.map(|g| g.digest), Some(digest(200)));
    }
    finish(stores).await;
}

/// Runs every phase of a collection of `registry` to its end, leaving alone what is younger
/// than `cutoff`; returns what was freed (objects are claimed, then forgotten as the server
/// does once their content is deleted).
async fn collect(m: &Meta, registry: i64, cutoff: i64, dry_run: bool) -> Vec<crate::Garbage> {
    let mut c = m.collector(registry, cutoff, dry_run).await.unwrap();
    let mut freed = Vec::new();
    for phase in [
        crate::GcPhase::Manifests,
        crate::GcPhase::Links,
        crate::GcPhase::Objects,
    ] {
        // Passes until one frees nothing: freeing a subject makes its referrers garbage.
        loop {
            let mut after = None;
            let mut pass = 0;
            loop {
                let marked = c.mark(phase, after.as_ref(), 2).await.unwrap();
                let Some(last) = marked.last().cloned() else {
                    break;
                };
                let swept = c.sweep(&marked).await.unwrap();
                pass += swept.len();
                freed.extend(swept);
                after = Some(last);
            }
            if pass == 0 {
                break;
            }
        }
    }
    c.end().await.unwrap();
    if !dry_run {
        for g in &freed {
            if let crate::Garbage::Object { scope, digest, .. } = g {
                m.forget_object(scope, digest).await.unwrap();
            }
        }
    }
    freed
}

fn freed_digests(freed: &[crate::Garbage]) -> (Vec<String>, Vec<String>) {
    let mut manifests = Vec::new();
    let mut objects = Vec::new();
    for g in freed {
        match g {
            crate::Garbage::Manifest { digest, .. } => manifests.push(digest.clone()),
            crate::Garbage::Object { digest, .. } => objects.push(digest.clone()),
            crate::Garbage::Link { .. } => {}
        }
    }
    manifests.sort();
    objects.sort();
    (manifests, objects)
}

#[tokio::test]
async fn collection_frees_what_nothing_references_and_keeps_the_rest() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("gc", "eu").await.unwrap();
        let other = m.ensure_registry("other", "eu").await.unwrap();
        let (shared, only_old, only_kept, sig_layer, young) =
            (digest(1), digest(2), digest(3), digest(4), digest(5));
        for (reg, repo, d) in [
            (r.id, "app", &shared),
            (r.id, "app", &only_old),
            (r.id, "app", &only_kept),
            (r.id, "app", &sig_layer),
            (other.id, "app", &shared),
        ] {
            m.pin_and_commit(reg, repo, d, 10, None).await.unwrap();
        }
        // old: untagged once v1 moves; kept: tagged; sig: a referrer of kept.
        let (old, kept, sig, orphan_ref) = (digest(10), digest(11), digest(12), digest(13));
        m.put_manifest(
            r.id,
            "app",
            manifest(&old, vec![&shared, &only_old], None),
            Some("v1"),
        )
        .await
        .unwrap();
        m.put_manifest(
            r.id,
            "app",
            manifest(&kept, vec![&shared, &only_kept], None),
            Some("v1"),
        )
        .await
        .unwrap();
        m.put_manifest(
            r.id,
            "app",
            manifest(&sig, vec![&sig_layer], Some(&kept)),
            None,
        )
        .await
        .unwrap();
        // A referrer of `old`: it goes with its subject.
        m.put_manifest(
            r.id,
            "app",
            manifest(&orphan_ref, vec![&sig_layer], Some(&old)),
            None,
        )
        .await
        .unwrap();
        m.put_manifest(
            other.id,
            "app",
            manifest(&old, vec![&shared], None),
            Some("x"),
        )
        .await
        .unwrap();
        let cutoff = crate::now_millis() + 1;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // Uploaded after the cutoff: protected by the grace period though nothing uses it.
        m.pin_and_commit(r.id, "app", &young, 10, None)
            .await
            .unwrap();

        let dry = collect(m, r.id, cutoff, true).await;
        let want_manifests = {
            let mut v = vec![old.clone(), orphan_ref.clone()];
            v.sort();
            v
        };
        assert_eq!(
            freed_digests(&dry),
            (want_manifests.clone(), vec![only_old.clone()])
        );
        // The dry run changed nothing.
        assert!(m
            .manifest_by_digest(r.id, "app", &old)
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            m.repository_blob(r.id, "app", &only_old).await.unwrap(),
            Some(10)
        );

        let freed = collect(m, r.id, cutoff, false).await;
        assert_eq!(
            freed_digests(&freed),
            (want_manifests, vec![only_old.clone()])
        );
        assert!(m
            .manifest_by_digest(r.id, "app", &old)
            .await
            .unwrap()
            .is_none());
        assert!(m
            .manifest_by_digest(other.id, "app", &old)
            .await
            .unwrap()
            .is_some());
        assert!(m
            .manifest_by_digest(r.id, "app", &sig)
            .await
            .unwrap()
            .is_some());
        for (d, linked) in [
            (&shared, true),
            (&only_kept, true),
            (&sig_layer, true),
            (&young, true),
            (&only_old, false),
        ] {
            assert_eq!(
                m.repository_blob(r.id, "app", d).await.unwrap().is_some(),
                linked,
                "{d}"
            );
        }
        // Nothing left to free; a second run is empty.
        assert!(collect(m, r.id, cutoff, false).await.is_empty());

        // Deleting the repository frees everything only it used, after the grace period.
        assert!(m.delete_repository(r.id, "app").await.unwrap());
        let cutoff = crate::now_millis() + 1;
        let (_, objects) = freed_digests(&collect(m, r.id, cutoff, false).await);
        let mut want = vec![only_kept.clone(), sig_layer.clone(), young.clone()];
        want.sort();
        assert_eq!(objects, want);
        // The other registry's shared layer stays.
        assert_eq!(
            m.repository_blob(other.id, "app", &shared).await.unwrap(),
            Some(10)
        );
        assert_eq!(m.stored_bytes().await.unwrap(), 10);
    }
    finish(stores).await;
}

#[tokio::test]
async fn a_manifest_pushed_between_mark_and_sweep_keeps_its_blob() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m.ensure_registry("race", "eu").await.unwrap();
        let layer = digest(1);
        m.pin_and_commit(r.id, "app", &layer, 10, None)
            .await
            .unwrap();
        let cutoff = crate::now_millis() + 1;
        let mut c = m.collector(r.id, cutoff, false).await.unwrap();
        let marked = c.mark(crate::GcPhase::Links, None, 10).await.unwrap();
        assert_eq!(marked.len(), 1, "the unreferenced link is marked");
        // Meanwhile a push references it.
        m.put_manifest(
            r.id,
            "app",
            manifest(&digest(9), vec![&layer], None),
            Some("v1"),
        )
        .await
        .unwrap();
        assert!(c.sweep(&marked).await.unwrap().is_empty());
        // And its object is linked, so not garbage either.
        assert!(c
            .mark(crate::GcPhase::Objects, None, 10)
            .await
            .unwrap()
            .is_empty());
        c.end().await.unwrap();
        assert_eq!(
            m.repository_blob(r.id, "app", &layer).await.unwrap(),
            Some(10)
        );

        // The other way round: a claimed object cannot be linked, and an upload of the same
        // blob waits for its deletion (pin reports it).
        let gone = digest(2);
        m.pin_and_commit(r.id, "tmp", &gone, 5, None).await.unwrap();
        assert!(m.delete_repository(r.id, "tmp").await.unwrap());
        let cutoff = crate::now_millis() + 1;
        let mut c = m.collector(r.id, cutoff, false).await.unwrap();
        let marked = c.mark(crate::GcPhase::Objects, None, 10).await.unwrap();
        assert_eq!(c.sweep(&marked).await.unwrap().len(), 1);
        c.end().await.unwrap();
        assert!(matches!(
            m.pin_object("", &gone, 5).await.unwrap(),
            crate::Pin::Deleting(_)
        ));
        assert!(matches!(
            m.commit_blob(r.id, "", "tmp", &gone, 5, None).await,
            Err(MetaError::Collected(_))
        ));
        // A claim whose run stopped is found by the next one once it is stale, not before.
        let long_ago = crate::now_millis() - 60_000;
        assert!(m.stale_objects(long_ago, 10).await.unwrap().is_empty());
        let stale = m.stale_objects(crate::now_millis() + 1, 10).await.unwrap();
        assert!(matches!(&stale[..], [crate::Garbage::Object { digest, .. }] if *digest == gone));
        m.forget_object("", &gone).await.unwrap();
        assert_eq!(
            m.pin_object("", &gone, 5).await.unwrap(),
            crate::Pin::Pinned
        );
        assert!(m
            .commit_blob(r.id, "", "tmp", &gone, 5, None)
            .await
            .unwrap());
    }
    finish(stores).await;
}

fn finding(id: &str, package: &str, severity: &str, rank: i64, fixed: bool) -> crate::FindingRow {
    crate::FindingRow {
        vuln_id: id.into(),
        package: package.into(),
        installed: "1.0".into(),
        fixed: fixed.then(|| "1.1".to_string()),
        severity: severity.into(),
        rank,
        score: Some(rank as f64 * 2.0),
        ids: vec![id.to_string(), format!("GHSA-{id}")],
        doc: "{}".into(),
    }
}

fn outcome(db_version: i64, findings: Vec<crate::FindingRow>) -> crate::ScanOutcome {
    crate::ScanOutcome {
        status: "scanned".into(),
        reason: None,
        db_version,
        os: Some("debian 12".into()),
        packages: Some(90),
        partial: false,
        highest: findings.first().map(|f| f.severity.clone()),
        summary: Some("{}".into()),
        findings,
    }
}

/// Scans of images no registry holds any more are forgotten with their findings; an image still
/// held in another repository keeps its scan.
#[tokio::test]
async fn orphaned_scans_are_dropped() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let a = m.ensure_registry("alpha", "eu").await.unwrap();
        let (kept, gone) = (digest(1), digest(2));
        m.put_manifest(a.id, "app", manifest(&kept, vec![], None), Some("v1"))
            .await
            .unwrap();
        m.put_manifest(a.id, "other", manifest(&kept, vec![], None), None)
            .await
            .unwrap();
        m.put_manifest(a.id, "app", manifest(&gone, vec![], None), Some("v2"))
            .await
            .unwrap();
        let v = m.vuln_db_version().await.unwrap();
        for d in [&kept, &gone] {
            m.queue_scan("", d).await.unwrap();
            m.finish_scan(
                "",
                d,
                outcome(v, vec![finding("CVE-1", "openssl", "high", 4, true)]),
            )
            .await
            .unwrap();
        }
        assert_eq!(m.drop_orphaned_scans().await.unwrap(), 0, "both are held");
        m.delete_manifest(a.id, "app", &gone).await.unwrap();
        m.delete_manifest(a.id, "app", &kept).await.unwrap();
        assert_eq!(m.drop_orphaned_scans().await.unwrap(), 1);
        let left = m.scans_of("", &[kept.clone(), gone.clone()]).await.unwrap();
        assert_eq!(
            left.iter().map(|r| r.digest.clone()).collect::<Vec<_>>(),
            std::slice::from_ref(&kept)
        );
        let filter = crate::FindingFilter {
            severities: vec![],
            fixable: false,
        };
        assert_eq!(
            m.scan_findings("", &kept, &filter, None, 10)
                .await
                .unwrap()
                .0
                .len(),
            1
        );
        assert!(m
            .scan_findings("", &gone, &filter, None, 10)
            .await
            .unwrap()
            .0
            .is_empty());
    }
    finish(stores).await;
}

/// The scan queue hands each job to one claimer, takes abandoned claims over, and after the
/// database changes hands out results of images pushed or pulled lately to be matched again.
#[tokio::test]
async fn scans_are_claimed_once_and_rematched_when_the_database_changes() {
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let a = m.ensure_registry("alpha", "eu").await.unwrap();
        let (img1, img2, index) = (digest(1), digest(2), digest(3));
        m.put_manifest(a.id, "app", manifest(&img1, vec![], None), Some("v1"))
            .await
            .unwrap();
        m.put_manifest(a.id, "app", manifest(&img2, vec![], None), None)
            .await
            .unwrap();
        let mut idx = manifest(&index, vec![], None);
        idx.media_type = "application/vnd.oci.image.index.v1+json".into();
        idx.manifests = vec![img1.clone()];
        m.put_manifest(a.id, "app", idx, Some("multi"))
            .await
            .unwrap();
        // A repository whose name is too short for a scan.
        m.put_manifest(a.id, "x", manifest(&digest(4), vec![], None), None)
            .await
            .unwrap();

        assert!(m.queue_scan("", &img1).await.unwrap());
        assert!(!m.queue_scan("", &img1).await.unwrap(), "queued once");
        // Switching scanning on later queues the rest: images only, names of scannable length.
        assert_eq!(m.queue_registry_scans(a.id).await.unwrap(), 1);

        let now = crate::now_millis();
        let v = m.vuln_db_version().await.unwrap();
        let first = m
            .claim_scan(v, 0, now - 60_000, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (first.digest.as_str(), first.rematch, first.attempts),
            (img1.as_str(), false, 1)
        );
        let second = m
            .claim_scan(v, 0, now - 60_000, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.digest, img2);
        assert_eq!(
            m.claim_scan(v, 0, now - 60_000, true).await.unwrap(),
            None,
            "all claimed"
        );
        // A claim older than the stale mark is taken over.
        let again = m
            .claim_scan(v, 0, crate::now_millis() + 1, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.digest.as_str(), again.attempts), (img1.as_str(), 2));
        m.release_scan("", &img2).await.unwrap();

        let findings = vec![
            finding("CVE-2024-0003", "zlib", "critical", 5, true),
            finding("CVE-2024-0001", "openssl", "high", 4, true),
            finding("CVE-2024-0002", "openssl", "high", 4, false),
            finding("CVE-2024-0004", "bash", "low", 2, false),
        ];
        m.finish_scan("", &img1, outcome(v, findings.clone()))
            .await
            .unwrap();
        let got = m.scans_of("", &[img1.clone(), img2.clone()]).await.unwrap();
        let one = got.iter().find(|r| r.digest == img1).unwrap();
        assert_eq!(one.status, "scanned");
        assert_eq!(one.highest.as_deref(), Some("critical"));
        assert!(one.scanned_at.is_some());
        let two = got.iter().find(|r| r.digest == img2).unwrap();
        assert_eq!((two.status.as_str(), two.scanned_at), ("pending", None));

        // Most severe first, in pages; filters by severity and fixable.
        let all = crate::FindingFilter::default();
        let (page1, more) = m.scan_findings("", &img1, &all, None, 2).await.unwrap();
        assert!(more);
        assert_eq!(page1, findings[..2].to_vec());
        let last = &page1[1];
        let cursor = (
            last.rank,
            last.vuln_id.clone(),
            last.package.clone(),
            last.installed.clone(),
        );
        let (page2, more) = m
            .scan_findings("", &img1, &all, Some(&cursor), 2)
            .await
            .unwrap();
        assert!(!more);
        assert_eq!(page2, findings[2..].to_vec());
        let high_fixable = crate::FindingFilter {
            severities: vec!["high".into(), "low".into()],
            fixable: true,
        };
        let (only, _) = m
            .scan_findings("", &img1, &high_fixable, None, 10)
            .await
            .unwrap();
        assert_eq!(only, vec![findings[1].clone()]);

        // A new database: the result is matched again, once, while the image is recent.
        let v2 = m.bump_vuln_db().await.unwrap();
        assert_eq!(v2, v + 1);
        let far_future = crate::now_millis() + 3_600_000;
        assert_eq!(
            m.claim_scan(v2, far_future, 0, true)
                .await
                .unwrap()
                .map(|j| j.digest),
            Some(img2.clone()),
            "pending scans go first"
        );
        assert_eq!(
            m.claim_scan(v2, far_future, 0, true).await.unwrap(),
            None,
            "not recent"
        );
        assert_eq!(
            m.claim_scan(v2, 0, 0, false).await.unwrap(),
            None,
            "pending only"
        );
        let rematch = m.claim_scan(v2, 0, 0, true).await.unwrap().unwrap();
        assert_eq!(
            (rematch.digest.as_str(), rematch.rematch),
            (img1.as_str(), true)
        );
        m.finish_scan("", &img1, outcome(v2, vec![])).await.unwrap();
        assert_eq!(m.claim_scan(v2, 0, 0, true).await.unwrap(), None);
        assert!(m
            .scan_findings("", &img1, &all, None, 10)
            .await
            .unwrap()
            .0
            .is_empty());

        // A pull counts as recent use: it is stamped by the audit writer.
        let v3 = m.bump_vuln_db().await.unwrap();
        let pull = crate::OwnedAuditEntry {
            actor: "token:1".into(),
            action: "manifest.pull".into(),
            registry_id: a.id,
            repository: Some("app".into()),
            digest: Some(img1.clone()),
            detail: None,
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let before = crate::now_millis();
        m.audit_batch(vec![pull]).await.unwrap();
        let job = m.claim_scan(v3, before, 0, true).await.unwrap().unwrap();
        assert_eq!((job.digest.as_str(), job.rematch), (img1.as_str(), true));

        // The image's manifest is found through any repository of the scope; a dropped scan
        // is gone with its findings.
        let (_, media_type) = m.scan_manifest("", &img1).await.unwrap().unwrap();
        assert_eq!(media_type, "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(m.scan_manifest("other-key", &img1).await.unwrap(), None);
        m.drop_scan("", &img1).await.unwrap();
        assert!(m
            .scans_of("", std::slice::from_ref(&img1))
            .await
            .unwrap()
            .is_empty());
    }
    finish(stores).await;
}

#[tokio::test]
async fn storage_is_sampled_once_per_interval_per_registry() {
    use crate::NewRegistry;
    let stores = stores().await;
    for s in &stores {
        let m = &s.meta;
        let r = m
            .create_registry(&NewRegistry {
                name: "alpha",
                location: "eu",
                scanning: false,
                gc_schedule: None,
            })
            .await
            .unwrap();
        let hour = 3_600_000;
        assert_eq!(m.sample_storage(10 * hour).await.unwrap(), 1);
        // Another node in the same interval finds it taken.
        assert_eq!(m.sample_storage(10 * hour).await.unwrap(), 0);
        m.pin_and_commit(r.id, "app", "sha256:aa", 1000, None)
            .await
            .unwrap();
        assert_eq!(m.sample_storage(11 * hour).await.unwrap(), 1);
        assert_eq!(
            m.storage_history(r.id, 0).await.unwrap(),
            vec![(10 * hour, 0), (11 * hour, 1000)]
        );
        assert_eq!(m.storage_history(r.id, 11 * hour).await.unwrap().len(), 1);
    }
    finish(stores).await;
}
