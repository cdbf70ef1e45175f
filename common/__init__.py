"""What pipeline/, operators/ and trainer/ all need, below all three: errors a user can act
on (`errors`), YAML configs validated with the path of a bad key (`yamlconf`), the input
model and document readers (`inputs`, `readers`, `readers_web`, `decoding`, `ids`), storage
of run folders on paths or URIs (`storage`) and the bookkeeping column names (`columns`).
Nothing here imports pipeline/, operators/ or trainer/."""
