"""Scene building (bpy): ``build.build_reconstruction`` turns a reply into objects; ``faces`` makes
face-mode objects and the mesh, image and material helpers, ``heads`` the rigged head on top of them, ``animation`` a video's performance as its F-curves."""
