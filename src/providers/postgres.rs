//! The `postgres` provider: `GRANT role TO account` and `REVOKE role FROM
//! account` on a real server. Identifiers are quoted, so a hostile role or
//! account name is only ever a name. Membership already held, or already
//! gone, counts as success.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool as R2Pool};

use super::{Action, Call, ProviderError};
use crate::config::Secret;

#[derive(Clone)]
pub struct Pool(R2Pool<ConnectionManager<PgConnection>>);

impl Pool {
    pub fn new(url: &Secret) -> Pool {
        let manager = ConnectionManager::<PgConnection>::new(url.expose());
        Pool(
            R2Pool::builder()
                .max_size(4)
                .min_idle(Some(0))
                .connection_timeout(std::time::Duration::from_secs(5))
                .build_unchecked(manager),
        )
    }

    pub async fn call(&self, call: &Call<'_>) -> Result<(), ProviderError> {
        let pool = self.0.clone();
        let sql = statement(call.action, call.target, call.account);
        let action = call.action;
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|_| {
                ProviderError::Call("cannot connect to the PostgreSQL server".into())
            })?;
            match conn.batch_execute(&sql) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let msg = e.to_string();
                    // Revoking from a role or account that no longer exists
                    // leaves nothing to take away.
                    if action == Action::Revoke && msg.contains("does not exist") {
                        Ok(())
                    } else {
                        Err(ProviderError::Call(format!("PostgreSQL: {msg}")))
                    }
                }
            }
        })
        .await
        .map_err(|e| ProviderError::Call(e.to_string()))?
    }

    /// Members of `role` (for drift checks).
    pub async fn members(&self, role: &str) -> Result<Vec<String>, ProviderError> {
        #[derive(QueryableByName)]
        struct Member {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        let pool = self.0.clone();
        let role = role.to_string();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .map_err(|_| ProviderError::Call("cannot connect".into()))?;
            let rows: Vec<Member> = diesel::sql_query(
                "SELECT m.rolname::text AS name FROM pg_auth_members am \
                 JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member \
                 WHERE r.rolname = $1 ORDER BY 1",
            )
            .bind::<diesel::sql_types::Text, _>(&role)
            .load(&mut conn)
            .map_err(|e| ProviderError::Call(e.to_string()))?;
            Ok(rows.into_iter().map(|m| m.name).collect())
        })
        .await
        .map_err(|e| ProviderError::Call(e.to_string()))?
    }
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\0', "").replace('"', "\"\""))
}

pub fn statement(action: Action, role: &str, account: &str) -> String {
    match action {
        Action::Grant => format!("GRANT {} TO {}", quote_ident(role), quote_ident(account)),
        Action::Revoke => format!("REVOKE {} FROM {}", quote_ident(role), quote_ident(account)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_names() {
        assert_eq!(
            statement(Action::Grant, "ro\"; DROP TABLE x; --", "a\"b"),
            "GRANT \"ro\"\"; DROP TABLE x; --\" TO \"a\"\"b\""
        );
    }
}
