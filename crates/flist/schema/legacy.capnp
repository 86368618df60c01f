# The Cap'n Proto structures of a legacy 0-fs flist (`.flist`), as the 0-fs tools (0-flist,
# g8ufs, rfs 1.x) lay them out. Only the wire layout matters: field ordinals, types, the union
# and the defaults must stay exactly as they are; names are ours. Structures the format defines
# but no reader uses (user groups) are left out.
@0xfe8f9d3975f63c7e;

# One block of a file's content in the block store.
struct FileBlock {
  hash @0 :Data;   # store key: BLAKE2b-128 of the stored (compressed, encrypted) bytes
  key  @1 :Data;   # XXTEA key: BLAKE2b-128 of the plain content
}

struct File {
  blockSize @0 :UInt16;         # in 4 KiB units; readers ignore it and assume 512 KiB
  blocks    @1 :List(FileBlock);
}

struct Link {
  target @0 :Text;
}

struct Special {
  type @0 :Type;
  data @1 :Data;   # for devices: "major,minor" as text

  enum Type {
    socket   @0;
    block    @1;
    chardev  @2;
    fifopipe @3;
    unknown  @4;
  }
}

struct SubDir {
  key @0 :Text;    # the subdirectory's key in the entries table
}

# One entry of a directory.
struct Inode {
  name @0 :Text;
  size @1 :UInt64;

  attributes :union {
    dir     @2 :SubDir;
    file    @3 :File;
    link    @4 :Link;
    special @5 :Special;
  }

  aclkey           @6 :Text;    # key of its ACI in the entries table
  modificationTime @7 :UInt32;
  creationTime     @8 :UInt32;
}

# A directory, stored under the BLAKE2b-128 hex digest of its path relative to the root.
struct Dir {
  name             @0 :Text;
  location         @1 :Text;           # its path relative to the root
  contents         @2 :List(Inode);
  parent           @3 :Text;           # the parent's key
  size             @4 :UInt64;
  aclkey           @5 :Text;
  modificationTime @6 :UInt32;
  creationTime     @7 :UInt32;
}

# Ownership and permissions, shared by every entry naming its key.
struct ACI {
  uname  @0 :Text;
  gname  @1 :Text;
  mode   @2 :UInt16;

  rights @3 :List(Right);
  struct Right {
    right       @0 :Text;
    usergroupid @1 :UInt16;
  }

  id  @4 :UInt32;
  uid @5 :Int64 = -1;   # -1: not recorded, the name counts
  gid @6 :Int64 = -1;
}
