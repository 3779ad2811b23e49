module tenant-config-controller/testenv-pause

go 1.26
