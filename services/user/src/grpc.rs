//! `shopmesh.user.v1.UserService`: every RPC acts on the authenticated
//! caller only; ids of other users' rows look exactly like missing ones.

use shopmesh_platform::auth::RequestAuthExt as _;
use shopmesh_platform::grpc::{db_error, invalid_argument, timestamp};
use shopmesh_platform::pb::common::v1::PostalAddress;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{Invalid, NewAddress, ProfileUpdate};
use crate::pb;
use crate::store::{self, AddError, AddressRow, ProfileRow};

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Self {
        invalid_argument(&e.field, e.reason)
    }
}

impl TryFrom<pb::UpdateMeRequest> for ProfileUpdate {
    type Error = Status;
    fn try_from(r: pb::UpdateMeRequest) -> Result<Self, Status> {
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let profile = r.profile.unwrap_or_default();
        Ok(ProfileUpdate::from_mask(&paths, &profile.name, &profile.phone)?)
    }
}

impl TryFrom<pb::AddAddressRequest> for NewAddress {
    type Error = Status;
    fn try_from(r: pb::AddAddressRequest) -> Result<Self, Status> {
        let address = r.address.ok_or_else(|| invalid_argument("address", "is required"))?;
        let postal = address.postal_address.ok_or_else(|| invalid_argument("address.postal_address", "is required"))?;
        NewAddress::parse(&address.label, &postal, address.is_default, "address.label", "address.postal_address")
    }
}

fn address_id(raw: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw.trim()).map_err(|_| invalid_argument("address_id", "must be a UUID"))
}

impl From<ProfileRow> for pb::Profile {
    fn from(p: ProfileRow) -> Self {
        pb::Profile {
            user_id: p.user_id.to_string(),
            email: p.email,
            name: p.name,
            phone: p.phone,
            created_at: Some(timestamp(p.created_at)),
            updated_at: Some(timestamp(p.updated_at)),
        }
    }
}

impl From<AddressRow> for pb::Address {
    fn from(a: AddressRow) -> Self {
        pb::Address {
            id: a.id.to_string(),
            label: a.label,
            postal_address: Some(PostalAddress {
                recipient_name: a.recipient_name,
                line1: a.line1,
                line2: a.line2,
                city: a.city,
                region: a.region,
                postal_code: a.postal_code,
                country_code: a.country_code,
                phone: a.phone,
            }),
            is_default: a.is_default,
            created_at: Some(timestamp(a.created_at)),
        }
    }
}

/// The caller's user id; a token whose subject isn't one is refused.
fn caller<T>(request: &Request<T>) -> Result<Uuid, Status> {
    let principal = request.principal()?;
    Uuid::parse_str(&principal.user_id).map_err(|_| Status::unauthenticated("token subject is not a user id"))
}

fn profile_not_ready() -> Status {
    Status::not_found("profile not created yet")
}

fn address_not_found() -> Status {
    Status::not_found("address not found")
}

pub struct UserApi {
    pub pool: PgPool,
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for UserApi {
    async fn get_me(&self, request: Request<pb::GetMeRequest>) -> Result<Response<pb::GetMeResponse>, Status> {
        let user_id = caller(&request)?;
        let profile = store::get_profile(&self.pool, user_id).await.map_err(db_error)?.ok_or_else(profile_not_ready)?;
        Ok(Response::new(pb::GetMeResponse { profile: Some(profile.into()) }))
    }

    async fn update_me(&self, request: Request<pb::UpdateMeRequest>) -> Result<Response<pb::UpdateMeResponse>, Status> {
        let user_id = caller(&request)?;
        let update = ProfileUpdate::try_from(request.into_inner())?;
        let profile = store::update_profile(&self.pool, user_id, &update)
            .await
            .map_err(db_error)?
            .ok_or_else(profile_not_ready)?;
        Ok(Response::new(pb::UpdateMeResponse { profile: Some(profile.into()) }))
    }

    async fn list_addresses(
        &self,
        request: Request<pb::ListAddressesRequest>,
    ) -> Result<Response<pb::ListAddressesResponse>, Status> {
        let user_id = caller(&request)?;
        let rows = store::list_addresses(&self.pool, user_id).await.map_err(db_error)?;
        Ok(Response::new(pb::ListAddressesResponse { addresses: rows.into_iter().map(Into::into).collect() }))
    }

    async fn get_address(
        &self,
        request: Request<pb::GetAddressRequest>,
    ) -> Result<Response<pb::GetAddressResponse>, Status> {
        let user_id = caller(&request)?;
        let id = address_id(&request.get_ref().address_id)?;
        let row = store::get_address(&self.pool, user_id, id).await.map_err(db_error)?.ok_or_else(address_not_found)?;
        Ok(Response::new(pb::GetAddressResponse { address: Some(row.into()) }))
    }

    async fn add_address(
        &self,
        request: Request<pb::AddAddressRequest>,
    ) -> Result<Response<pb::AddAddressResponse>, Status> {
        let user_id = caller(&request)?;
        let address = NewAddress::try_from(request.into_inner())?;
        let row = store::add_address(&self.pool, user_id, &address).await.map_err(|e| match e {
            AddError::BookFull(msg) => Status::failed_precondition(msg),
            AddError::Db(e) => db_error(e),
        })?;
        Ok(Response::new(pb::AddAddressResponse { address: Some(row.into()) }))
    }

    async fn delete_address(
        &self,
        request: Request<pb::DeleteAddressRequest>,
    ) -> Result<Response<pb::DeleteAddressResponse>, Status> {
        let user_id = caller(&request)?;
        let id = address_id(&request.get_ref().address_id)?;
        if !store::delete_address(&self.pool, user_id, id).await.map_err(db_error)? {
            return Err(address_not_found());
        }
        Ok(Response::new(pb::DeleteAddressResponse {}))
    }
}
