# Installation and the Debian package (CPack): `cmake --build build --target package` writes
# build/tern_VERSION_ARCH.deb. docs/operations.md says how to install it.
#
# `cmake --install build` installs the same files under CMAKE_INSTALL_PREFIX (default
# /usr/local); the package installs under /usr, with its configuration in /etc/tern.
include(GNUInstallDirs)

# libtern for jobs built outside this tree.
install(TARGETS tern_client tern_client_shared
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ipc/libtern/include/tern/ipc.h ipc/libtern/include/tern/ipc.hpp
  base/include/tern/expected.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tern)
install(FILES ipc/include/tern/ipc/job_message.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tern/ipc)
# The .pc file names the prefix it is installed under: CPack installs with CMAKE_INSTALL_PREFIX
# /usr, so it is written at install time, not configure time.
install(CODE "
  set(PROJECT_VERSION ${PROJECT_VERSION})
  set(CMAKE_INSTALL_LIBDIR ${CMAKE_INSTALL_LIBDIR})
  set(CMAKE_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR})
  configure_file(${PROJECT_SOURCE_DIR}/deploy/package/libtern.pc.in
                 ${PROJECT_BINARY_DIR}/install/libtern.pc @ONLY)
  file(READ ${PROJECT_SOURCE_DIR}/deploy/ternd.service unit)
  string(REPLACE \"/usr/local/bin/\" \"\${CMAKE_INSTALL_PREFIX}/bin/\" unit \"\${unit}\")
  file(WRITE ${PROJECT_BINARY_DIR}/install/ternd.service \"\${unit}\")
")
install(FILES ${PROJECT_BINARY_DIR}/install/libtern.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The service: /usr/lib/systemd/system in the package (Debian 12's systemd reads it).
install(FILES ${PROJECT_BINARY_DIR}/install/ternd.service DESTINATION lib/systemd/system)
install(FILES deploy/package/tern.bash-completion
  DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions RENAME tern)
install(PROGRAMS deploy/install-criu DESTINATION lib/tern)
install(FILES docs/operations.md docs/config.md docs/security.md docs/cli.md
  DESTINATION ${CMAKE_INSTALL_DOCDIR})

# A conffile: dpkg keeps the operator's edits on upgrade. Only the package installs it
# (`cmake --install` to /usr/local leaves the machine's /etc alone).
install(FILES deploy/package/ternd.toml DESTINATION /etc/tern COMPONENT conffiles
  EXCLUDE_FROM_ALL)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME tern)
set(CPACK_PACKAGE_VENDOR "tern")
set(CPACK_PACKAGE_CONTACT "tern maintainers <tern@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "process-migration cluster: agent (ternd), CLI (tern), libtern")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
# Every component, the conffile's included, in the one package.
set(CPACK_COMPONENTS_ALL Unspecified conffiles)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_GROUPING ALL_COMPONENTS_IN_ONE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(TERN_PACKAGE_RELEASE 1 CACHE STRING "Debian revision of the package (raise it to rebuild)")
set(CPACK_DEBIAN_PACKAGE_RELEASE ${TERN_PACKAGE_RELEASE})
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
# What shlibdeps cannot see: the programs the agent and install-criu run, and the libraries of
# the private CRIU that Debian 12 provides (deploy/install-criu).
set(CPACK_DEBIAN_PACKAGE_DEPENDS
  "iproute2, util-linux, procps, passwd, ca-certificates, debian-archive-keyring, apt, \
libbsd0, libgnutls30, libnftables1, libprotobuf-c1, libuuid1")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${PROJECT_SOURCE_DIR}/deploy/package/conffiles
  ${PROJECT_SOURCE_DIR}/deploy/package/postinst
  ${PROJECT_SOURCE_DIR}/deploy/package/prerm
  ${PROJECT_SOURCE_DIR}/deploy/package/postrm
  ${PROJECT_SOURCE_DIR}/deploy/package/triggers)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
