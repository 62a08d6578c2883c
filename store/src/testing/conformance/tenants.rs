//! Conformance checks of tenants and users as data.

use super::*;

/// Users as data (issue 5): a user row belongs to an existing tenant, is replaced by a
/// second put (keeping its creation time), is listed and looked up only under its tenant,
/// and its audit row commits with it (none for a rejected put).
pub async fn users_are_per_tenant_data(store: DynStore) {
    let t = fresh_tenant("users");
    let other = fresh_tenant("users-other");
    for x in [&t, &other] {
        ok(store.create_tenant(x, x, json!({}), None).await, "tenant");
    }
    let who = |target: &str| AuditEntry::ok(&t, "root", "user.put", target);
    let u = ok(
        store
            .put_user(
                &t,
                "alice",
                vec!["viewer".into()],
                false,
                Some(&who("alice")),
            )
            .await,
        "put user",
    );
    assert_eq!((u.tenant.as_str(), u.id.as_str()), (t.as_str(), "alice"));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let u2 = ok(
        store
            .put_user(
                &t,
                "alice",
                vec!["operator".into()],
                true,
                Some(&who("alice")),
            )
            .await,
        "replace user",
    );
    assert_eq!(u2.created_at_ms, u.created_at_ms, "creation time kept");
    assert!(u2.updated_at_ms >= u.updated_at_ms);
    assert_eq!(
        (u2.roles.clone(), u2.disabled),
        (vec!["operator".to_string()], true)
    );
    let ghost = fresh_tenant("users-ghost");
    err(
        store
            .put_user(
                &ghost,
                "bob",
                vec![],
                false,
                Some(&AuditEntry::ok(&ghost, "root", "user.put", "bob")),
            )
            .await,
        "user of an unknown tenant",
    );
    assert!(audit_rows(&store, Scope::Tenant(&ghost)).await.is_empty());
    assert_eq!(audit_rows(&store, Scope::Tenant(&t)).await.len(), 2);
    assert_eq!(ok(store.list_users(&t).await, "list"), vec![u2.clone()]);
    assert!(ok(store.list_users(&other).await, "list other").is_empty());
    let a = ok(store.access(&t, "alice").await, "access");
    assert!(a.tenant_exists);
    assert_eq!(a.user, Some(u2));
    let a = ok(store.access(&other, "alice").await, "access other");
    assert!(a.tenant_exists && a.user.is_none(), "users are per tenant");
    let a = ok(store.access(&ghost, "alice").await, "access ghost");
    assert!(!a.tenant_exists && a.user.is_none());
}

/// Tenants as data: created once (`Conflict` for a taken id), read, listed and given new
/// limits; a tenant that does not exist is `NotFound` naming it — for new limits and for a
/// user put under it — and changes nothing.
pub async fn missing_tenants_are_not_found(store: DynStore) {
    let t = fresh_tenant("tenants");
    let created = ok(
        store
            .create_tenant(&t, "Tenant T", json!({"submit_per_sec": 5}), None)
            .await,
        "create tenant",
    );
    assert_eq!(
        (created.id.as_str(), created.name.as_str()),
        (t.as_str(), "Tenant T")
    );
    let again = err(
        store.create_tenant(&t, "again", json!({}), None).await,
        "a taken tenant id",
    );
    assert!(matches!(again, StoreError::Conflict(_)), "{again:?}");
    let limited = ok(
        store
            .set_tenant_limits(&t, json!({"submit_per_sec": 9}), None)
            .await,
        "new limits",
    );
    assert_eq!(limited.limits, json!({"submit_per_sec": 9}));
    assert_eq!(
        limited.created_at_ms, created.created_at_ms,
        "creation time kept"
    );
    assert_eq!(limited.name, "Tenant T", "the name is kept");
    let read = ok(store.get_tenant(&t).await, "get tenant");
    assert_eq!(read, Some(limited.clone()));
    let listed = ok(store.list_tenants().await, "list tenants");
    assert!(listed.contains(&limited), "{listed:?}");

    let ghost = fresh_tenant("tenants-ghost");
    let missing = Entity::Tenant(ghost.clone());
    match store.set_tenant_limits(&ghost, json!({}), None).await {
        Err(StoreError::NotFound(e)) => assert_eq!(e, missing),
        other => panic!("conformance: limits of a missing tenant: {other:?}"),
    }
    match store.put_user(&ghost, "bob", vec![], false, None).await {
        Err(StoreError::NotFound(e)) => assert_eq!(e, missing),
        other => panic!("conformance: a user of a missing tenant: {other:?}"),
    }
    assert_eq!(ok(store.get_tenant(&ghost).await, "get ghost"), None);
    assert!(ok(store.list_users(&ghost).await, "ghost users").is_empty());
}
