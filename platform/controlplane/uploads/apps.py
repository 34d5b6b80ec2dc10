from django.apps import AppConfig


class UploadsConfig(AppConfig):
    name = "controlplane.uploads"
    label = "uploads"

    def ready(self) -> None:
        from controlplane.uploads.tempfiles import upload_temp_dir_ensure, upload_temp_files_sweep

        # Uploads spool to a folder of their own; what a killed web worker left there is
        # removed when the next process starts (the reaper sweeps it periodically too).
        upload_temp_dir_ensure()
        upload_temp_files_sweep(at_start=True)
