//! Diesel's view of the tables; the same on both backends (see `migrations/`).

diesel::table! {
    deliveries (source, delivery_id) {
        source -> Text,
        delivery_id -> Text,
        received_at -> BigInt,
        body_sha256 -> Text,
        ticket -> Nullable<Text>,
        outcome -> Text,
    }
}

diesel::table! {
    tickets (key) {
        key -> Text,
        source -> Text,
        source_updated_at -> BigInt,
        snapshot -> Text,
        decision -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    decisions (id) {
        id -> BigInt,
        ticket -> Text,
        at -> BigInt,
        outcome -> Text,
        reason -> Nullable<Text>,
        detail -> Text,
    }
}

diesel::table! {
    grants (id) {
        id -> Text,
        ticket -> Text,
        subject -> Text,
        account -> Text,
        resource -> Text,
        state -> Text,
        origin -> Text,
        starts_at -> BigInt,
        expires_at -> BigInt,
        activated_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        revoke_reason -> Nullable<Text>,
        failure -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    jobs (id) {
        id -> BigInt,
        kind -> Text,
        dedupe_key -> Text,
        payload -> Text,
        run_at -> BigInt,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        locked_by -> Nullable<Text>,
        locked_until -> Nullable<BigInt>,
        version -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    audit_events (seq) {
        seq -> BigInt,
        at -> BigInt,
        #[sql_name = "type"]
        type_ -> Text,
        ticket -> Nullable<Text>,
        grant_id -> Nullable<Text>,
        actor -> Text,
        data -> Text,
        prev_hash -> Text,
        hash -> Text,
    }
}

diesel::table! {
    audit_head (id) {
        id -> Integer,
        seq -> BigInt,
        hash -> Text,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        alg -> Text,
        private_pem -> Text,
        public_jwk -> Text,
        created_at -> BigInt,
        retired_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    grant_access (grant_id) {
        grant_id -> Text,
        role -> Text,
        preexisting -> Bool,
        updated_at -> BigInt,
        told_until -> Nullable<BigInt>,
    }
}

diesel::joinable!(grant_access -> grants (grant_id));

diesel::table! {
    drift_findings (id) {
        id -> Text,
        provider -> Text,
        account -> Text,
        target -> Text,
        found_at -> BigInt,
        resolved_at -> Nullable<BigInt>,
        state -> Text,
    }
}

diesel::table! {
    drift_checks (id) {
        id -> Integer,
        checked_at -> BigInt,
    }
}

diesel::table! {
    audit_checkpoints (seq) {
        seq -> BigInt,
        body -> Text,
        digest -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    sink_cursors (sink) {
        sink -> Text,
        seq -> BigInt,
        updated_at -> BigInt,
        batch_end -> Nullable<BigInt>,
        attempts -> Integer,
        retry_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    audit_checkpoints,
    grant_access,
    deliveries,
    tickets,
    decisions,
    grants,
    jobs,
    audit_events,
    audit_head,
    signing_keys,
    drift_findings,
    drift_checks,
    sink_cursors,
);
