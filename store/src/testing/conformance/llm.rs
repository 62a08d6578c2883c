//! Conformance checks of LLM providers per tenant and daily token budgets.

use super::*;
use crate::{LlmProvider, LlmProviderKind};

fn provider(name: &str, base: &str) -> LlmProvider {
    LlmProvider {
        name: name.into(),
        kind: LlmProviderKind::Openai,
        base_url: base.into(),
        models: vec!["m1".into()],
        api_key_env: Some("KEY_VAR".into()),
        api_key_file: None,
    }
}

/// Providers are per-tenant data: put replaces by name, lists in name order under its
/// tenant only, deletes once; an unknown tenant is `NotFound`; each change's audit row
/// commits with it (none for a refused put or a delete of nothing).
pub async fn llm_providers_are_per_tenant_data(store: DynStore) {
    let t = fresh_tenant("llm");
    let other = fresh_tenant("llm-other");
    for x in [&t, &other] {
        ok(store.create_tenant(x, x, json!({}), None).await, "tenant");
    }
    let who = |target: &str| AuditEntry::ok(&t, "root", "llm.provider", target);
    ok(
        store
            .put_llm_provider(&t, provider("zeta", "http://z"), Some(&who("zeta")))
            .await,
        "put zeta",
    );
    ok(
        store
            .put_llm_provider(&t, provider("alpha", "http://a"), Some(&who("alpha")))
            .await,
        "put alpha",
    );
    let replaced = ok(
        store
            .put_llm_provider(&t, provider("alpha", "http://a2"), Some(&who("alpha")))
            .await,
        "replace alpha",
    );
    assert_eq!(replaced.base_url, "http://a2");
    let list = ok(store.llm_providers(&t).await, "list");
    let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["alpha", "zeta"],
        "conformance: providers by name"
    );
    assert_eq!(
        list[0],
        provider("alpha", "http://a2"),
        "conformance: round trip"
    );
    assert!(
        ok(store.llm_providers(&other).await, "list other").is_empty(),
        "conformance: G6: another tenant sees none of them"
    );
    let ghost = fresh_tenant("llm-ghost");
    let e = err(
        store
            .put_llm_provider(&ghost, provider("x", "http://x"), Some(&who("x")))
            .await,
        "put for an unknown tenant",
    );
    assert!(matches!(e, StoreError::NotFound(_)), "{e:?}");
    assert!(ok(
        store
            .delete_llm_provider(&t, "zeta", Some(&who("zeta")))
            .await,
        "delete"
    ));
    assert!(!ok(
        store
            .delete_llm_provider(&t, "zeta", Some(&who("zeta")))
            .await,
        "delete again"
    ));
    let names: Vec<String> = ok(store.llm_providers(&t).await, "list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["alpha".to_string()]);
    let rows = audit_rows(&store, Scope::Tenant(&t)).await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.entry.action == "llm.provider")
            .count(),
        4,
        "conformance: three puts and one delete audited: {rows:?}"
    );
}

/// A tenant's daily token count: reservations pass only within the limit (a refused one
/// changes nothing), settle replaces a reservation by the usage, and concurrent
/// reservations never pass the limit together.
pub async fn llm_token_reservations_respect_the_daily_limit(store: DynStore) {
    let t = fresh_tenant("tokens");
    assert_eq!(ok(store.llm_tokens_today(&t).await, "today"), 0);
    let r = ok(store.reserve_llm_tokens(&t, 60, 100).await, "reserve 60");
    let r = r.expect("conformance: 60 of 100 must be granted");
    assert_eq!(r.used, 60);
    assert!(
        ok(store.reserve_llm_tokens(&t, 41, 100).await, "reserve 41").is_none(),
        "conformance: 60 + 41 > 100 must be refused"
    );
    assert_eq!(
        ok(store.llm_tokens_today(&t).await, "today"),
        60,
        "a refusal changes nothing"
    );
    ok(store.settle_llm_tokens(&t, r.day, 60, 25).await, "settle");
    assert_eq!(ok(store.llm_tokens_today(&t).await, "today"), 25);
    assert!(ok(store.reserve_llm_tokens(&t, 75, 100).await, "reserve 75").is_some());
    assert!(ok(store.reserve_llm_tokens(&t, 1, 100).await, "reserve 1").is_none());
    assert!(ok(store.reserve_llm_tokens(&t, 500, 100).await, "too big").is_none());

    let c = fresh_tenant("tokens-race");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, c) = (store.clone(), c.clone());
            tokio::spawn(async move { store.reserve_llm_tokens(&c, 10, 100).await })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        if ok(ok(task.await, "join"), "reserve").is_some() {
            granted += 1;
        }
    }
    assert_eq!(
        granted, 10,
        "conformance: exactly 100 / 10 concurrent reservations pass"
    );
    assert_eq!(ok(store.llm_tokens_today(&c).await, "today"), 100);
}
