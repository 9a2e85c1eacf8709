// Initiates the replica set rs0 of deploy/compose.yaml once; running it again changes
// nothing. Then waits until the set has a primary, so omniroute starts on a writable set.
// Run by the compose service mongo-init: mongosh --host mongo1:27017 --file mongo-init.js
const config = {
  _id: "rs0",
  members: [
    { _id: 0, host: "mongo1:27017", priority: 2 },
    { _id: 1, host: "mongo2:27017", priority: 1 },
    { _id: 2, host: "mongo3:27017", priority: 1 },
  ],
};

function initiated() {
  try {
    rs.status();
    return true;
  } catch (e) {
    if (e.codeName === "NotYetInitialized" || e.code === 94) return false;
    throw e;
  }
}

if (initiated()) {
  print("replica set rs0 already initiated");
} else {
  try {
    rs.initiate(config);
    print("replica set rs0 initiated");
  } catch (e) {
    // Another run got there first (two `up`s at once): that is fine too.
    if (e.codeName !== "AlreadyInitialized" && e.code !== 23) throw e;
    print("replica set rs0 already initiated");
  }
}

for (let i = 0; i < 120; i++) {
  const primary = rs.status().members.find((m) => m.stateStr === "PRIMARY");
  if (primary) {
    print(`primary: ${primary.name}`);
    quit(0);
  }
  sleep(1000);
}
print("no primary after 120 s");
quit(1);
