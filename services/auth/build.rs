fn main() {
    shopmesh_protogen::compile(&["shopmesh/auth/v1/auth.proto"], false);
}
