//! Authorization: who may do what to which object — in one place.
//!
//! Every operation of the application layer that needs permission calls [`authorize`] with
//! the acting [`Principal`] and the [`Action`] it is about to take, naming the object's owner
//! where there is one. REST handlers and GraphQL resolvers both reach these operations, so
//! the same rule guards a route and its mutation; nothing checks roles anywhere else.

use bazaar_store::{ApiKeyId, Role, SessionId, UserId};

use crate::orders::OrderScope;

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
    /// A signed-in user, through a session's access token or an API key.
    User {
        id: UserId,
        role: Role,
        credential: Credential,
    },
}

/// How a user proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Session(SessionId),
    ApiKey(ApiKeyId),
}

impl Principal {
    /// The user's id, or `Unauthenticated`.
    pub fn user_id(&self) -> Result<UserId, Denied> {
        match self {
            Self::User { id, .. } => Ok(*id),
            Self::Anonymous => Err(Denied::Unauthenticated),
        }
    }

    /// The label audit events use: `user:{id}` or `anonymous`.
    pub fn audit_label(&self) -> String {
        match self {
            Self::User { id, .. } => format!("user:{id}"),
            Self::Anonymous => "anonymous".into(),
        }
    }

    fn role(&self) -> Option<Role> {
        match self {
            Self::User { role, .. } => Some(*role),
            Self::Anonymous => None,
        }
    }
}

/// An operation that needs permission, with the owner of the object it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// List a new product (the actor becomes its seller).
    CreateProduct,
    /// Change or delete a product or its variants; `owner` is its seller (`None`: the house).
    EditProduct {
        owner: Option<UserId>,
    },
    /// See a user's full profile (email, phone).
    ReadPrivateProfile {
        user: UserId,
    },
    /// Change a user's own profile fields.
    EditProfile {
        user: UserId,
    },
    /// Change anyone's role.
    ChangeRole,
    /// Create, list or revoke one's own API keys.
    ManageApiKeys,
    /// End one's own session.
    Logout,
    /// Read the security event log.
    ReadAudit,
    /// Keep a cart and check out (any signed-in user).
    Shop,
    /// See an order: its buyer, a seller with a line in it, or an admin.
    ReadOrder {
        buyer: UserId,
        sells_in_it: bool,
    },
    /// See an order's personal data (the full shipping address): its buyer or an admin.
    ReadBuyerDetails {
        buyer: UserId,
    },
    /// List orders: one's own purchases, the orders one sells in, or all of them.
    ListOrders {
        scope: OrderScope,
    },
    /// Cancel a pending order, or refund a paid one: its buyer or an admin.
    CancelOrder {
        buyer: UserId,
    },
    RefundOrder {
        buyer: UserId,
    },
    /// Mark lines shipped: a seller with lines in the order, or an admin.
    ShipOrder {
        sells_in_it: bool,
    },
    /// Record a delivery: admins.
    DeliverOrder,
    /// List, show, replay and delete dead-lettered events: admins.
    OperateEvents,
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No (valid) credentials: the client should sign in. HTTP 401.
    #[error("authentication required")]
    Unauthenticated,
    /// Signed in, but not allowed. HTTP 403.
    #[error("not allowed")]
    Forbidden,
}

/// The whole policy.
pub fn authorize(principal: &Principal, action: Action) -> Result<(), Denied> {
    let Some(role) = principal.role() else {
        return Err(Denied::Unauthenticated);
    };
    let me = principal.user_id()?;
    let allowed = match action {
        Action::CreateProduct | Action::ManageApiKeys => matches!(role, Role::Seller | Role::Admin),
        Action::EditProduct { owner } => {
            role == Role::Admin || (role == Role::Seller && owner == Some(me))
        }
        Action::ReadPrivateProfile { user } | Action::EditProfile { user } => {
            role == Role::Admin || user == me
        }
        Action::ChangeRole | Action::ReadAudit | Action::DeliverOrder | Action::OperateEvents => {
            role == Role::Admin
        }
        Action::Shop => true,
        Action::ReadOrder { buyer, sells_in_it } => {
            role == Role::Admin || buyer == me || (role == Role::Seller && sells_in_it)
        }
        Action::ReadBuyerDetails { buyer }
        | Action::CancelOrder { buyer }
        | Action::RefundOrder { buyer } => role == Role::Admin || buyer == me,
        Action::ListOrders { scope } => match scope {
            OrderScope::Mine => true,
            OrderScope::Selling => matches!(role, Role::Seller | Role::Admin),
            OrderScope::All => role == Role::Admin,
        },
        Action::ShipOrder { sells_in_it } => {
            role == Role::Admin || (role == Role::Seller && sells_in_it)
        }
        Action::Logout => matches!(
            principal,
            Principal::User {
                credential: Credential::Session(_),
                ..
            }
        ),
    };
    if allowed {
        Ok(())
    } else {
        Err(Denied::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64, role: Role) -> Principal {
        Principal::User {
            id: UserId::new(id),
            role,
            credential: Credential::Session(SessionId::new(1)),
        }
    }

    #[test]
    fn the_policy_table() {
        let (customer, seller, other_seller, admin) = (
            user(1, Role::Customer),
            user(2, Role::Seller),
            user(3, Role::Seller),
            user(4, Role::Admin),
        );
        let own = Action::EditProduct {
            owner: Some(UserId::new(2)),
        };
        let house = Action::EditProduct { owner: None };
        let cases = [
            (
                &Principal::Anonymous,
                Action::CreateProduct,
                Err(Denied::Unauthenticated),
            ),
            (&customer, Action::CreateProduct, Err(Denied::Forbidden)),
            (&seller, Action::CreateProduct, Ok(())),
            (&seller, own, Ok(())),
            (&other_seller, own, Err(Denied::Forbidden)),
            (&customer, own, Err(Denied::Forbidden)),
            (&admin, own, Ok(())),
            (&seller, house, Err(Denied::Forbidden)),
            (&admin, house, Ok(())),
            (
                &customer,
                Action::ReadPrivateProfile {
                    user: UserId::new(1),
                },
                Ok(()),
            ),
            (
                &customer,
                Action::ReadPrivateProfile {
                    user: UserId::new(2),
                },
                Err(Denied::Forbidden),
            ),
            (
                &admin,
                Action::ReadPrivateProfile {
                    user: UserId::new(2),
                },
                Ok(()),
            ),
            (&seller, Action::ChangeRole, Err(Denied::Forbidden)),
            (&seller, Action::OperateEvents, Err(Denied::Forbidden)),
            (&customer, Action::OperateEvents, Err(Denied::Forbidden)),
            (&admin, Action::OperateEvents, Ok(())),
            (&admin, Action::ChangeRole, Ok(())),
            (&customer, Action::ManageApiKeys, Err(Denied::Forbidden)),
            (&seller, Action::ManageApiKeys, Ok(())),
            (
                &Principal::Anonymous,
                Action::Logout,
                Err(Denied::Unauthenticated),
            ),
        ];
        for (principal, action, expected) in cases {
            assert_eq!(
                authorize(principal, action),
                expected,
                "{principal:?} {action:?}"
            );
        }
        let by_key = Principal::User {
            id: UserId::new(2),
            role: Role::Seller,
            credential: Credential::ApiKey(ApiKeyId::new(9)),
        };
        assert_eq!(
            authorize(&by_key, Action::Logout),
            Err(Denied::Forbidden),
            "an API key has no session to end"
        );
    }
}
