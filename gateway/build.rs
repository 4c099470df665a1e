fn main() {
    shopmesh_protogen::descriptor_set_of_all("shopmesh.binpb");
}
