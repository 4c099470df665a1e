//! What auth publishes: `UserRegistered` on user-events, so the user service
//! creates the profile and others learn about the account.

use shopmesh_platform::pb::events::v1::UserRegistered;
use uuid::Uuid;

use crate::domain::{DisplayName, Email};

pub fn user_registered(user_id: Uuid, email: &Email, name: &DisplayName, roles: &[String]) -> UserRegistered {
    UserRegistered {
        user_id: user_id.to_string(),
        email: email.as_str().to_owned(),
        name: name.as_str().to_owned(),
        roles: roles.to_vec(),
    }
}
