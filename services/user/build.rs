fn main() {
    shopmesh_protogen::compile(&["shopmesh/user/v1/user.proto"], false);
}
